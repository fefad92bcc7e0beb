"""SIIM-ACR: a small tree in the Kaggle layout with tricky rows, and the real train-rle.csv parsed in full."""

import csv
import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.image_files import gradient, write_dicom, write_png
from reclf.data.sources import prepare
from reclf.data.sources.common import BadInputError, PrepareOptions, SourceLayoutError
from reclf.data.sources.masks import rle_encode, rle_runs, runs_to_mask
from reclf.data.sources.siim import parse
from reclf.data.studies import read_studies


def xrv_data() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    assert spec is not None and spec.submodule_search_locations, "torchxrayvision missing: run `make setup`"
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _tree(root: Path, leading_space: bool = True) -> dict[str, np.ndarray]:
    ids = [f"1.2.3.{i}" for i in range(6)]
    masks = {}
    m1 = np.zeros((1024, 1024), bool)
    m1[100:200, 300:350] = True
    m2 = np.zeros((1024, 1024), bool)
    m2[600:700, 50:80] = True
    masks[ids[0]] = m1 | m2
    rows = [
        (ids[0], rle_encode(m1)),
        (ids[0], rle_encode(m2)),  # a second row for the same image: united
        (ids[1], "-1"),
        (ids[2], "-1"),
        (ids[3], "999999999 5"),  # runs past the image: malformed
        (ids[4], "-1"),  # image file missing
        (ids[5], "-1"),  # corrupt DICOM
    ]
    col = " EncodedPixels" if leading_space else "EncodedPixels"
    lines = [f"ImageId,{col}"] + [f"{i},{r}" for i, r in rows] + ["1.2.3.99,-1,extra"]
    (root / "train-rle.csv").write_text("\n".join(lines) + "\n")
    img = gradient(1024, 1024)
    write_dicom(root / "dicom-images-train" / "s0" / "r0" / f"{ids[0]}.dcm", img, bits=16, monochrome1=True, view="PA")
    write_dicom(root / "dicom-images-train" / "s1" / "r1" / f"{ids[1]}.dcm", img, bits=8, view="AP")
    write_png(root / "png_images" / f"{ids[2]}.png", img)
    write_png(root / "png_images" / f"{ids[3]}.png", img)
    bad = root / "dicom-images-train" / "s5" / "r5" / f"{ids[5]}.dcm"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\0" * 200)
    return masks


@pytest.mark.parametrize("leading_space", [True, False])
def test_small_tree(tmp_path, leading_space):
    root, out = tmp_path / "siim", tmp_path / "out"
    root.mkdir()
    masks = _tree(root, leading_space)
    report = prepare("siim", PrepareOptions(root=root, out=out, size=64, progress=False))
    df = read_studies(out).set_index("study_id")
    assert sorted(df.index) == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
    d = report["dropped"]
    assert d["malformed_csv_row"]["count"] == 1 and d["malformed_rle"]["count"] == 1
    assert d["missing_image"]["count"] == 1 and d["unreadable_image"]["count"] == 1
    assert report["rows_read"] == 7 and report["rows_written"] == 3
    assert df.loc["1.2.3.0", "Pneumothorax"] == 1.0 and df.loc["1.2.3.1", "Pneumothorax"] == 0.0
    assert df.loc["1.2.3.0", "view"] == "PA" and df.loc["1.2.3.1", "view"] == "AP"
    mask = np.asarray(Image.open(out / df.loc["1.2.3.0", "mask_path"])) > 0
    expect = masks["1.2.3.0"][8::16, 8::16]
    assert mask.shape == (64, 64) and (mask == expect).mean() > 0.99 and mask.sum() > 0
    assert not np.asarray(Image.open(out / df.loc["1.2.3.1", "mask_path"])).any()
    assert json.loads((out / "prepare_report.json").read_text())["seed"] == 0
    with pytest.raises(BadInputError):
        prepare("siim", PrepareOptions(root=root, out=tmp_path / "o2", size=64, strict=True, progress=False))


def test_split_by_image_and_balanced(tmp_path):
    rows = ["ImageId, EncodedPixels"]
    for i in range(60):
        rows += [f"img{i},-1"] if i % 4 else [f"img{i},5 3", f"img{i},20 2"]  # positives have two rows
    (tmp_path / "train-rle.csv").write_text("\n".join(rows) + "\n")
    t = parse(PrepareOptions(root=tmp_path, out=tmp_path / "o", metadata_only=True))
    assert len(t.studies) == 60 and t.studies["study_id"].is_unique  # one row per image, never per RLE row
    t2 = parse(PrepareOptions(root=tmp_path, out=tmp_path / "o", metadata_only=True, extra={"balanced_train": True}))
    train = t2.studies[t2.studies["split"] == "train"]
    assert (train["Pneumothorax"] == 1).sum() == (train["Pneumothorax"] == 0).sum() > 0
    assert t2.drops.filters["balance_negatives"].count > 0
    again = parse(PrepareOptions(root=tmp_path, out=tmp_path / "o", metadata_only=True))
    assert again.studies["split"].tolist() == t.studies["split"].tolist()  # seeded


def test_layout_error_names_the_file(tmp_path):
    with pytest.raises(SourceLayoutError, match="train-rle.csv"):
        parse(PrepareOptions(root=tmp_path, out=tmp_path / "o", metadata_only=True))


def test_real_train_rle_csv_in_full(tmp_path):
    src = xrv_data() / "siim-pneumothorax-train-rle.csv.gz"
    (tmp_path / "train-rle.csv.gz").symlink_to(src)
    with gzip.open(src, "rt") as fh:
        rows = list(csv.reader(fh))
    header, rows = rows[0], rows[1:]
    assert header[1] == " EncodedPixels"
    ids = {r[0].strip() for r in rows}
    positive_ids = {r[0].strip() for r in rows if r[1].strip() != "-1"}
    report = prepare("siim", PrepareOptions(root=tmp_path, out=tmp_path / "out", metadata_only=True, progress=False))
    assert report["rows_read"] == len(rows) == 12954
    assert report["rows_written"] == len(ids) and report["dropped_total"] == 0
    df = read_studies(tmp_path / "out")
    assert set(df["study_id"]) == ids and set(df.loc[df["Pneumothorax"] == 1, "study_id"]) == positive_ids
    assert sum(report["splits"].values()) == len(ids)
    # Every RLE decodes to a mask inside the 1024x1024 image, non-empty exactly where the row is not -1.
    n_pos = 0
    for _image_id, rle in rows:
        starts, lengths = rle_runs(rle)
        if rle.strip() == "-1":
            assert starts.size == 0
            continue
        n_pos += 1
        assert starts.size > 0 and int(starts[-1] + lengths[-1]) <= 1024 * 1024
        assert np.all(starts[1:] >= starts[:-1] + lengths[:-1])  # runs ordered, not overlapping
        mask = runs_to_mask(starts, lengths)
        assert mask.shape == (1024, 1024) and np.count_nonzero(mask) == int(lengths.sum()) > 0
    assert n_pos == sum(1 for r in rows if r[1].strip() != "-1")
