"""RSNA Pneumonia: a small tree (DICOMs incl. MONOCHROME1/16-bit, tricky rows) and the real labels file in full."""

import csv
import importlib.util
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.image_files import gradient, write_dicom
from reclf.data.sources import prepare
from reclf.data.sources.common import PrepareOptions, SourceLayoutError
from reclf.data.sources.rsna import parse
from reclf.data.studies import read_studies


def xrv_data() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    assert spec is not None and spec.submodule_search_locations, "torchxrayvision missing: run `make setup`"
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def test_small_tree(tmp_path):
    root, out = tmp_path / "rsna", tmp_path / "out"
    lines = [
        "patientId,x,y,width,height,Target",
        "p0,10,20,30,40,1",
        "p0,60,10,20,20,1",  # second box of the same patient
        "p1,,,,,0",
        "p2,,,,,0",
        "p3,,,,,1",  # Target 1 without a box: malformed
        "p4,5,5,5,5,0",  # Target 0 with a box: malformed
        "p5,,,,,0",  # no DICOM
        "p6,,,,,0",  # corrupt DICOM
        "p7,1,2,3",  # short row: malformed
    ]
    (root / "stage_2_train_images").mkdir(parents=True)
    (root / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")
    (root / "stage_2_detailed_class_info.csv").write_text(
        "patientId,class\np0,Lung Opacity\np0,Lung Opacity\np1,Normal\np2,No Lung Opacity / Not Normal\n"
    )
    img = gradient(100, 100)
    write_dicom(root / "stage_2_train_images/p0.dcm", img, bits=16, monochrome1=True, view="PA")
    write_dicom(root / "stage_2_train_images/p1.dcm", img, bits=12, view="AP")
    write_dicom(root / "stage_2_train_images/p2.dcm", img, bits=8)
    (root / "stage_2_train_images/p6.dcm").write_bytes(b"garbage")
    report = prepare("rsna", PrepareOptions(root=root, out=out, size=50, progress=False))
    df = read_studies(out).set_index("study_id")
    assert sorted(df.index) == ["p0", "p1", "p2"]
    d = report["dropped"]
    assert d["malformed_csv_row"]["count"] == 3
    assert d["missing_image"]["count"] == 1 and d["unreadable_image"]["count"] == 1
    assert df.loc["p0", "Pneumonia"] == 1 and df.loc["p0", "Lung Opacity"] == 1 and df.loc["p1", "Pneumonia"] == 0
    assert df.loc["p0", "class"] == "Lung Opacity" and df.loc["p2", "class"] == "No Lung Opacity / Not Normal"
    assert json.loads(df.loc["p0", "boxes"]) == [[10, 20, 30, 40], [60, 10, 20, 20]]
    assert df.loc["p0", "view"] == "PA" and df.loc["p1", "view"] == "AP" and df.loc["p2", "view"] == "UNKNOWN"
    mask = np.asarray(Image.open(out / df.loc["p0", "mask_path"])) > 0
    assert mask.shape == (50, 50) and mask[10:30, 5:20].all() and mask.sum() == 15 * 20 + 10 * 10
    cached = np.asarray(Image.open(out / df.loc["p0", "image_path"]))
    assert cached[:, -5:].mean() - cached[:, :5].mean() > 150  # MONOCHROME1 inverted back


def test_split_seeded_patient_level(tmp_path):
    lines = ["patientId,x,y,width,height,Target"] + [f"q{i},,,,,0" for i in range(100)]
    (tmp_path / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")
    opts = PrepareOptions(root=tmp_path, out=tmp_path / "o", metadata_only=True, seed=3)
    a, b = parse(opts).studies, parse(opts).studies
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].value_counts().to_dict() == {"train": 70, "valid": 15, "test": 15}
    assert (
        parse(PrepareOptions(root=tmp_path, out=tmp_path, metadata_only=True, seed=4)).studies["split"].tolist()
        != a["split"].tolist()
    )


def test_layout_error(tmp_path):
    with pytest.raises(SourceLayoutError, match="stage_2_train_labels.csv"):
        parse(PrepareOptions(root=tmp_path, out=tmp_path / "o"))


def test_real_labels_file_in_full(tmp_path):
    src = xrv_data() / "kaggle_stage_2_train_labels.csv.zip"
    (tmp_path / "stage_2_train_labels.csv.zip").symlink_to(src)
    with zipfile.ZipFile(src) as zf:
        rows = list(csv.DictReader(io.TextIOWrapper(zf.open(zf.namelist()[0]), "utf-8")))
    patients = {r["patientId"] for r in rows}
    positive = {r["patientId"] for r in rows if r["Target"] == "1"}
    boxes = sum(r["Target"] == "1" for r in rows)
    report = prepare("rsna", PrepareOptions(root=tmp_path, out=tmp_path / "out", metadata_only=True, progress=False))
    df = read_studies(tmp_path / "out")
    assert report["rows_read"] == len(rows) == 30227 and report["dropped_total"] == 0
    assert len(df) == len(patients) and set(df["study_id"]) == patients
    assert set(df.loc[df["Pneumonia"] == 1, "study_id"]) == positive
    assert sum(len(json.loads(b)) for b in df["boxes"]) == boxes
    assert (df.loc[df["Pneumonia"] == 0, "boxes"] == "[]").all()
    sizes = df["split"].value_counts()
    assert abs(sizes["train"] / len(df) - 0.7) < 0.01 and abs(sizes["test"] / len(df) - 0.15) < 0.01
