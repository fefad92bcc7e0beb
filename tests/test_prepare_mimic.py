"""MIMIC-CXR-JPG: a small tree in the distributed layout with tricky studies, reports as files or as the zip."""

import gzip
import zipfile

import pandas as pd
import pytest

from helpers.image_files import gradient, write_jpeg
from reclf.data.sources import prepare
from reclf.data.sources.common import BadInputError, PrepareOptions, SourceLayoutError
from reclf.data.sources.mimic import parse
from reclf.data.studies import CHEXPERT_LABELS, read_studies

GOOD = " FINAL REPORT\n INDICATION: cough\n FINDINGS: Lungs clear.\n IMPRESSION: Normal chest."
# subject, study, dicom, view, split, report (bytes or None), image: "ok" / "missing" / "corrupt"
STUDIES = [
    ("10000032", "50414267", "d1", "PA", "train", GOOD.encode(), "ok"),
    ("10000032", "50414267", "d2", "LATERAL", "train", GOOD.encode(), "ok"),
    ("10000033", "50000001", "d3", "AP", "validate", b"WET READ: x\n FINAL REPORT\nimpression: Effusion.", "ok"),
    ("10000034", "50000002", "d4", "PA", "test", b"No headers here, just text.", "ok"),
    ("10000035", "50000003", "d5", "PA", "train", None, "ok"),  # no report
    ("10000036", "50000004", "d6", "PA", "train", "FINDINGS: caf\xe9".encode("latin-1"), "ok"),  # not UTF-8
    ("10000037", "50000005", "d7", "PA", "train", b"INDICATION: x\nCOMPARISON: none", "ok"),  # no sections
    ("10000038", "50000006", "d8", "AP", "train", GOOD.encode(), "missing"),
    ("10000039", "50000007", "d9", "PA", "train", GOOD.encode(), "corrupt"),
]


def _tree(root, zipped=False):
    meta = pd.DataFrame(
        [(d, s, t, v) for s, t, d, v, *_ in STUDIES], columns=["dicom_id", "subject_id", "study_id", "ViewPosition"]
    )
    meta.loc[len(meta)] = ["d10", "notanumber", "1", "PA"]  # malformed row
    split = pd.DataFrame(
        [(d, t, s, sp) for s, t, d, _, sp, *_ in STUDIES], columns=["dicom_id", "study_id", "subject_id", "split"]
    )
    labels = pd.DataFrame([(s, t) for s, t, *_ in STUDIES], columns=["subject_id", "study_id"]).drop_duplicates()
    for c in CHEXPERT_LABELS:
        labels[c] = ""
    labels.loc[labels["study_id"] == "50414267", "Pleural Effusion"] = "1.0"
    labels = labels[labels["study_id"] != "50000002"]  # a study without a label row
    root.mkdir(parents=True)
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as fh:
        meta.to_csv(fh, index=False)
    with gzip.open(root / "mimic-cxr-2.0.0-split.csv.gz", "wt") as fh:
        split.to_csv(fh, index=False)
    labels.to_csv(root / "mimic-cxr-2.0.0-chexpert.csv", index=False)
    zf = zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") if zipped else None
    for s, t, d, _v, _sp, report, image in STUDIES:
        folder = root / "files" / f"p{s[:2]}" / f"p{s}"
        if report is not None:
            if zf is not None:
                zf.writestr(f"files/p{s[:2]}/p{s}/s{t}.txt", report)
            else:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"s{t}.txt").write_bytes(report)
        if image == "ok":
            write_jpeg(folder / f"s{t}" / f"{d}.jpg", gradient(90, 80))
        elif image == "corrupt":
            (folder / f"s{t}").mkdir(parents=True, exist_ok=True)
            (folder / f"s{t}" / f"{d}.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    if zf is not None:
        zf.close()


@pytest.mark.parametrize("zipped", [False, True])
def test_small_tree(tmp_path, zipped):
    root, out = tmp_path / "mimic", tmp_path / "out"
    _tree(root, zipped)
    report = prepare("mimic-cxr", PrepareOptions(root=root, out=out, size=32, progress=False))
    df = read_studies(out).set_index("study_id")
    assert sorted(df.index) == ["d1", "d3", "d4"]
    assert df.loc["d1", "findings"] == "Lungs clear." and df.loc["d1", "impression"] == "Normal chest."
    assert df.loc["d3", "impression"] == "Effusion." and "WET READ" not in df.loc["d3", "report"]
    assert df.loc["d4", "findings"] == "No headers here, just text."
    assert dict(df["split"]) == {"d1": "train", "d3": "valid", "d4": "test"}
    assert df.loc["d1", "Pleural Effusion"] == 1.0 and df[list(CHEXPERT_LABELS)].loc["d4"].isna().all()
    assert df.loc["d1", "patient_id"] == "10000032" and str(df.loc["d1", "mimic_study_id"]) == "50414267"
    assert df.loc["d3", "view"] == "AP" and (out / df.loc["d1", "image_path"]).is_file()
    d = report["dropped"]
    expected = {
        "view_lateral": 1,
        "missing_report": 1,
        "report_not_utf8": 1,
        "report_no_sections": 1,
        "missing_image": 1,
        "unreadable_image": 1,
        "malformed_csv_row": 1,
    }
    assert {k: v["count"] for k, v in d.items()} == expected
    assert report["notes"]["images_without_label_row"] == 1
    assert (out / "splits" / "valid.txt").read_text().split() == ["d3"]
    with pytest.raises(BadInputError):
        prepare("mimic-cxr", PrepareOptions(root=root, out=tmp_path / "o2", strict=True, progress=False))


def test_layout_error_names_missing_file(tmp_path):
    (tmp_path / "mimic-cxr-2.0.0-metadata.csv").write_text("dicom_id,subject_id,study_id,ViewPosition\n")
    with pytest.raises(SourceLayoutError, match="mimic-cxr-2.0.0-split.csv"):
        parse(PrepareOptions(root=tmp_path, out=tmp_path / "o"))
