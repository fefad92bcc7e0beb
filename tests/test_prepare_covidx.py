"""COVIDx: the space-separated lists of a release, patient-level split, release named in the output."""

import json

import pytest

from helpers.image_files import gradient, write_jpeg, write_png
from reclf.data.sources import prepare
from reclf.data.sources.common import PrepareOptions, SourceLayoutError
from reclf.data.sources.covidx import parse
from reclf.data.studies import read_studies


def test_small_tree(tmp_path):
    root, out = tmp_path / "covidx", tmp_path / "out"
    train = [f"P{i} img{i}.png {'COVID-19' if i % 3 == 0 else 'normal'} cohen" for i in range(20)]
    train += ["P0 img0b.jpg pneumonia rsna", "P99 both.png normal sirm", "broken-line", "P5 img5.png normal cohen"]
    test = ["P50 t0.png COVID-19 bimcv", "P99 t1.png normal sirm", "P51 missing.png normal x", "P52 bad.png normal x"]
    root.mkdir()
    (root / "train_COVIDx9A.txt").write_text("\n".join(train) + "\n")
    (root / "test_COVIDx9A.txt").write_text("\n".join(test) + "\n")
    for i in range(20):
        write_png(root / "train" / f"img{i}.png", gradient(40, 40, seed=i))
    write_jpeg(root / "train/img0b.jpg", gradient(40, 40))
    write_png(root / "train/both.png", gradient(40, 40))
    write_png(root / "test/t0.png", gradient(40, 40))
    write_png(root / "test/t1.png", gradient(40, 40))
    (root / "test/bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    report = prepare("covidx", PrepareOptions(root=root, out=out, size=16, progress=False, seed=1))
    assert report["release"] == "COVIDx9A"
    df = read_studies(out).set_index("study_id")
    d = {k: v["count"] for k, v in report["dropped"].items()}
    assert d == {
        "malformed_list_line": 1,
        "duplicate_train_file": 1,
        "patient_in_test": 1,
        "missing_image": 1,
        "unreadable_image": 1,
    }
    assert df.loc["test/t0.png", "split"] == "test" and df.loc["test/t0.png", "class"] == "COVID-19"
    assert df.loc["test/t0.png", "Pneumonia"] == 1 and df.loc["train/img1.png", "No Finding"] == 1
    train_rows = df[df["split"] != "test"]
    assert set(train_rows["split"]) == {"train", "valid"}
    assert train_rows.groupby("patient_id")["split"].nunique().max() == 1  # P0's two images stay together
    assert "train/both.png" not in df.index  # its patient is in the test list
    assert json.loads((out / "prepare_report.json").read_text())["release"] == "COVIDx9A"


def test_layout_error(tmp_path):
    with pytest.raises(SourceLayoutError, match="train"):
        parse(PrepareOptions(root=tmp_path, out=tmp_path / "o"))
