"""IU X-ray / OpenI: report XMLs (small tree and the real NLMCXR_reports.tgz in full) and the R2Gen layout."""

import importlib.util
import json
import re
import tarfile
from pathlib import Path

import pytest

from helpers.image_files import gradient, write_png
from reclf.data.sources import prepare
from reclf.data.sources.common import PrepareOptions, SourceLayoutError
from reclf.data.sources.iu_xray import mesh_labels, parse
from reclf.data.studies import read_studies


def xrv_data() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    assert spec is not None and spec.submodule_search_locations, "torchxrayvision missing: run `make setup`"
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _xml(n, findings, impression, images, mesh):
    ab = "".join(
        f'<AbstractText Label="{k}">{v}</AbstractText>'
        for k, v in (("FINDINGS", findings), ("IMPRESSION", impression))
        if v
    )
    im = "".join(f'<parentImage id="{i}"><url>/x/{i}.jpg</url></parentImage>' for i in images)
    me = "".join(f"<major>{m}</major>" for m in mesh)
    return (
        f'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="CXR{n}"/><MedlineCitation><Article>'
        f"<Abstract>{ab}</Abstract></Article></MedlineCitation><MeSH>{me}</MeSH>{im}</eCitation>"
    )


def test_small_openi_tree(tmp_path):
    root, out = tmp_path / "iu", tmp_path / "out"
    xml = root / "ecgen-radiology"
    xml.mkdir(parents=True)
    (xml / "1.xml").write_text(
        _xml(1, "Heart normal.", "Normal chest.", ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"], ["normal"])
    )
    (xml / "2.xml").write_text(
        _xml(2, "", "Left effusion.", ["CXR2_1_IM-0652-1001"], ["Pleural Effusion/left", "Opacity/lung/base"])
    )
    (xml / "3.xml").write_text(_xml(3, "", "", ["CXR3_1_IM-0001-1001"], []))  # no sections
    (xml / "4.xml").write_text(_xml(4, "Clear.", "", [], []))  # no image
    (xml / "5.xml").write_text("<eCitation><unclosed>")  # broken XML
    (xml / "6.xml").write_text(_xml(6, "Clear.", "", ["CXR6_1_IM-0002-1001"], []))  # PNG missing
    for i in ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_1_IM-0652-1001", "CXR3_1_IM-0001-1001"]:
        write_png(root / "NLMCXR_png" / f"{i}.png", gradient(50, 60))
    report = prepare("iu-xray", PrepareOptions(root=root, out=out, size=24, progress=False))
    df = read_studies(out).set_index("study_id")
    assert sorted(df.index) == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_1_IM-0652-1001"]
    assert df.loc["CXR1_1_IM-0001-3001", "patient_id"] == "CXR1" and df.loc["CXR1_1_IM-0001-3001", "No Finding"] == 1
    assert df.loc["CXR2_1_IM-0652-1001", "Pleural Effusion"] == 1 and df.loc["CXR2_1_IM-0652-1001", "Lung Opacity"] == 1
    assert df.loc["CXR2_1_IM-0652-1001", "impression"] == "Left effusion."
    assert df.groupby("patient_id")["split"].nunique().max() == 1
    d = {k: v["count"] for k, v in report["dropped"].items()}
    assert d == {"broken_xml": 1, "report_no_sections": 1, "report_without_image": 1, "missing_image": 1}


def test_r2gen_layout(tmp_path):
    ann = {
        "train": [
            {
                "id": "CXR1_1_IM-0001",
                "report": "The heart is normal.",
                "image_path": ["CXR1_1_IM-0001/0.png", "CXR1_1_IM-0001/1.png"],
                "split": "train",
            }
        ],
        "val": [{"id": "CXR2_1_IM-0652", "report": "Effusion.", "image_path": ["CXR2_1_IM-0652/0.png"]}],
        "test": [{"id": "CXR3_1_IM-0001", "report": "", "image_path": ["CXR3_1_IM-0001/0.png"]}, {"id": ""}],
    }
    (tmp_path / "annotation.json").write_text(json.dumps(ann))
    for p in ["CXR1_1_IM-0001/0.png", "CXR1_1_IM-0001/1.png", "CXR2_1_IM-0652/0.png", "CXR3_1_IM-0001/0.png"]:
        write_png(tmp_path / "images" / p, gradient(30, 30))
    report = prepare("iu-xray", PrepareOptions(root=tmp_path, out=tmp_path / "out", size=16, progress=False))
    df = read_studies(tmp_path / "out").set_index("study_id")
    assert dict(df["split"]) == {"CXR1_1_IM-0001/0": "train", "CXR1_1_IM-0001/1": "train", "CXR2_1_IM-0652/0": "valid"}
    assert df.loc["CXR2_1_IM-0652/0", "findings"] == "Effusion."
    assert {k: v["count"] for k, v in report["dropped"].items()} == {"malformed_annotation": 1, "report_no_sections": 1}


def test_mesh_table():
    lab = mesh_labels(["Cardiomegaly/mild", "Mediastinum/enlarged", "Mediastinum", "Thickening/pleura/left"])
    assert lab["Cardiomegaly"] == 1 and lab["Enlarged Cardiomediastinum"] == 1 and lab["Pleural Other"] == 1
    assert mesh_labels(["normal"])["No Finding"] == 1
    lab = mesh_labels(["normal", "Nodule"])
    assert lab["Lung Lesion"] == 1 and lab["No Finding"] != 1


def test_layout_error(tmp_path):
    with pytest.raises(SourceLayoutError, match="ecgen-radiology"):
        parse(PrepareOptions(root=tmp_path, out=tmp_path / "o"))


def test_real_openi_reports_in_full(tmp_path):
    src = xrv_data() / "NLMCXR_reports.tgz"
    (tmp_path / "NLMCXR_reports.tgz").symlink_to(src)
    n_xml, n_images, with_text = 0, 0, 0
    with tarfile.open(src) as tar:
        for m in tar.getmembers():
            if m.name.endswith(".xml"):
                text = tar.extractfile(m).read().decode("utf-8")
                n_xml += 1
                has_text = re.search(r'Label="(FINDINGS|IMPRESSION)">\S', text) is not None
                with_text += has_text
                n_images += len(re.findall(r"<parentImage id=", text)) if has_text else 0
    t = parse(PrepareOptions(root=tmp_path, out=tmp_path / "o", metadata_only=True))
    assert t.rows_read == n_xml == 3955
    assert t.drops.filters["report_no_sections"].count == n_xml - with_text
    assert len(t.studies) == n_images and t.studies["study_id"].is_unique
    assert t.studies["patient_id"].nunique() == t.info["n_reports"]
    assert (t.studies["findings"].str.len() + t.studies["impression"].str.len() > 0).all()
    assert t.studies["No Finding"].eq(1).sum() > 1000 and t.studies["Cardiomegaly"].eq(1).sum() > 300
