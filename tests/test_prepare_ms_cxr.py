"""MS-CXR: the local-alignment CSV in its distributed layout (v1.1.0 header, one row per box) against a small
MIMIC-CXR-JPG tree; boxes land on the image as cached, bad rows are counted, phrase grounding runs on the output."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.eval_stub import StubModel
from helpers.image_files import write_jpeg
from reclf.data.sources import prepare
from reclf.data.sources.common import BadInputError, PrepareOptions, SourceLayoutError
from reclf.data.sources.ms_cxr import parse
from reclf.data.studies import read_studies
from reclf.evaluate.loading import wrap_model
from reclf.evaluate.tasks.phrase_grounding import (
    PhraseGroundingConfig,
    read_phrases,
    region_mask,
    run_phrase_grounding,
)

HEADER = "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split"
# dicom, subject, study, (width, height) of the JPG, boxes that are bright in it
IMAGES = {
    "d1": ("10000032", "50414267", (100, 80), [(10, 40, 30, 25), (60, 10, 20, 20), (40, 5, 15, 10)]),
    "d2": ("10000033", "50000001", (120, 90), [(20, 15, 50, 40)]),
}


def _path(dicom: str) -> str:
    subject, study = IMAGES[dicom][0], IMAGES[dicom][1]
    return f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"


def _tree(tmp_path):
    root, mimic = tmp_path / "ms-cxr", tmp_path / "mimic-cxr-jpg"
    root.mkdir()
    for dicom, (_s, _t, (w, h), boxes) in IMAGES.items():
        arr = np.full((h, w), 0.15, dtype=np.float32)
        for x, y, bw, bh in boxes:
            arr[y : y + bh, x : x + bw] = 0.95
        write_jpeg(mimic / _path(dicom), arr, quality=95)
    lines = [
        HEADER,
        f"d1,Pneumonia,Patchy opacity in the right lower lobe,{_path('d1')},10,40,30,25,100,80,test",
        f"d1,Pneumonia,Patchy opacity in the right lower lobe,{_path('d1')},60,10,20,20,100,80,test",
        f"d1,Cardiomegaly,Enlarged heart,{_path('d1')},40,5,15,10,100,80,test",
        f'd2,Pneumothorax,"Small left apical pneumothorax, unchanged",{_path("d2")},20,15,50,40,120,90,val',
        "d3,Edema,Mild edema,files/p10/p10000034/s50000002/d3.jpg,5,5,0,10,100,80,test",  # empty box
        "d4,Edema,Mild edema,files/p10/p10000035/s50000003/d4.jpg,abc,5,10,10,100,80,test",  # not a number
        "d5,Atelectasis,Basal atelectasis,files/p10/p10000036/s50000004/d5.jpg,5,5,10,10,100,80,test",  # no image
        "d6,Atelectasis,Basal atelectasis,images/d6.jpg,5,5,10,10,100,80,test",  # not a MIMIC path
        "d7,Consolidation,Consolidation,files/p10/p10000037/s50000005/d7.jpg,5,5,10,10,100,80,test",
        "d7,Consolidation,Consolidation,files/p10/p10000037/s50000005/d7.jpg,5,5,10,10,90,80,test",  # other size
        f"d1,Pneumonia,Opacity, right,{_path('d1')},1,1,2,2,100,80,test",  # an unquoted comma: one field too many
    ]
    (root / "MS_CXR_Local_Alignment_v1.1.0.csv").write_text("\n".join(lines) + "\n")
    return root, mimic


class MapStub(StubModel):
    """The stub with word -> region attention (what the phrase-grounding task needs)."""

    def word_region_attention(self, img, txt):
        return torch.softmax(torch.einsum("bwd,brd->bwr", txt.words, img.local) / 0.1, dim=-1)


@pytest.mark.parametrize("square", [False, True])
def test_ms_cxr_prepare_places_boxes_on_the_cached_image(tmp_path, square):
    root, mimic = _tree(tmp_path)
    out = tmp_path / "out"
    report = prepare("ms-cxr", PrepareOptions(root=root, out=out, size=64, square=square, progress=False,
                                              extra={"mimic_jpg": mimic}))
    df = read_studies(out).set_index("study_id")
    assert sorted(df.index) == ["d1", "d2"]
    assert dict(df["split"]) == {"d1": "test", "d2": "valid"} and df.loc["d1", "patient_id"] == "10000032"
    assert df.loc["d2", "class"] == "Pneumothorax" and df.loc["d1", "source"] == "ms-cxr"
    counts = {k: v["count"] for k, v in report["dropped"].items()}
    assert counts == {"malformed_box": 2, "bad_path": 1, "conflicting_image_size": 2, "missing_image": 1,
                      "malformed_csv_row": 1}
    anns = json.loads(df.loc["d1", "annotations"])
    assert [a["phrase"] for a in anns] == ["Patchy opacity in the right lower lobe", "Enlarged heart"]
    assert [a["category"] for a in anns] == ["Pneumonia", "Cardiomegaly"]
    assert anns[0]["boxes_px"] == [[10, 40, 30, 25], [60, 10, 20, 20]]
    if not square:
        assert anns[0]["boxes"][0] == pytest.approx([0.1, 0.5, 0.3, 0.3125])
    else:  # a 100 x 80 image is padded to 100 x 100 (10 rows on top) before resizing
        assert anns[0]["boxes"][0] == pytest.approx([0.1, 0.5, 0.3, 0.25])
    assert json.loads(df.loc["d2", "annotations"])[0]["phrase"] == "Small left apical pneumothorax, unchanged"
    # the boxes, placed with the task's own geometry on the cached image, cover its bright patches
    from reclf.data.images import load_image

    table = read_studies(out)
    phrases = read_phrases(table, out, PhraseGroundingConfig())
    assert len(phrases.phrases) == 3
    for p in phrases.phrases:
        native = load_image(out / table.iloc[p.row]["image_path"])
        target = region_mask(p, out, native.shape, 64)
        from reclf.evaluate.tasks.phrase_grounding import _fit

        image = _fit(native, 64)
        assert target.any() and (image[target] > 0.5).mean() > 0.65, (p.phrase, image[target])  # edges blur
        assert image[~target].mean() < 0.35  # the phrase's other boxes and the background are outside


def test_ms_cxr_phrase_grounding_end_to_end(tmp_path):
    root, mimic = _tree(tmp_path)
    out = tmp_path / "out"
    prepare("ms-cxr", PrepareOptions(root=root, out=out, size=64, progress=False, extra={"mimic_jpg": mimic}))
    torch.manual_seed(0)
    res = run_phrase_grounding(wrap_model(MapStub()), out, tmp_path / "eval", PhraseGroundingConfig(n_boot=20))
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["task"] == "phrase-grounding" and saved["data"]["pairs"] == 3
    assert set(saved["metrics"]) == {"cnr", "cnr_signed", "miou", "pointing_game"}
    assert set(res.extra["per_category"]) == {"Pneumonia", "Cardiomegaly", "Pneumothorax"}
    assert res.extra["per_category"]["Pneumonia"]["n"] == 1
    for m in saved["metrics"].values():
        assert m["ci_low"] <= m["value"] <= m["ci_high"]


def test_ms_cxr_metadata_only_keeps_original_fractions(tmp_path):
    root, mimic = _tree(tmp_path)
    table = parse(PrepareOptions(root=root, out=tmp_path / "o", square=True, metadata_only=True,
                                 extra={"mimic_jpg": mimic}))
    df = table.studies.set_index("study_id")
    assert df.loc["d1", "source_path"] == str(mimic.resolve() / _path("d1"))
    # the originals are not padded: fractions of the original image even with --square
    assert json.loads(df.loc["d1", "annotations"])[0]["boxes"][0] == pytest.approx([0.1, 0.5, 0.3, 0.3125])


def test_ms_cxr_strict_and_layout_errors(tmp_path):
    root, mimic = _tree(tmp_path)
    with pytest.raises(BadInputError):
        prepare("ms-cxr", PrepareOptions(root=root, out=tmp_path / "o", strict=True, progress=False,
                                         extra={"mimic_jpg": mimic}))
    with pytest.raises(SourceLayoutError, match="MS_CXR_Local_Alignment_v1.1.0.csv"):
        parse(PrepareOptions(root=mimic, out=tmp_path / "o2"))
    with pytest.raises(SourceLayoutError, match="--mimic-jpg"):
        parse(PrepareOptions(root=root, out=tmp_path / "o3"))
    # v1.0.0: no split column -> every row is test
    old = root / "MS_CXR_Local_Alignment_v1.0.0.csv"
    csv = pd.read_csv(root / "MS_CXR_Local_Alignment_v1.1.0.csv", on_bad_lines="skip").drop(columns="split")
    csv.to_csv(old, index=False)
    (root / "MS_CXR_Local_Alignment_v1.1.0.csv").unlink()
    table = parse(PrepareOptions(root=root, out=tmp_path / "o4", extra={"mimic_jpg": mimic}))
    assert set(table.studies["split"]) == {"test"} and table.info["split_column"] is False
