"""Chest ImaGenome: the gold attribute table (tab-separated, its distributed path and columns) or silver scene
graphs against a small MIMIC-CXR-JPG tree -> finding-anatomy-side triples, foils that move a finding, and the
relations task on the result."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.eval_stub import StubModel
from helpers.image_files import gradient, write_jpeg
from reclf.data.sources import prepare
from reclf.data.sources.chest_imagenome import (
    GOLD_FILE,
    LUNG_REGIONS,
    Triple,
    _covered,
    parse,
    relation_candidates,
    supported,
)
from reclf.data.sources.common import BadInputError, PrepareOptions, SourceLayoutError
from reclf.data.studies import read_studies
from reclf.evaluate.loading import wrap_model
from reclf.evaluate.tasks.relations import RelationsConfig, run_relations

COLUMNS = ["patient_id", "study_id", "image_id", "row_id", "sentence", "bbox", "relation", "label_name", "categoryID",
           "context"]
IDS = {"g1": ("10000032", "50414267"), "g2": ("10000033", "50000001"), "g3": ("10000034", "50000002"),
       "g4": ("10000035", "50000003"), "g5": ("10000036", "50000004")}
# image, sentence index, sentence, region, label, category, context
ROWS = [
    ("g1", 0, "Left basal atelectasis, and a small right effusion.", "left lower lung zone", "atelectasis",
     "anatomicalfinding", "yes"),
    ("g1", 0, "Left basal atelectasis, and a small right effusion.", "right costophrenic angle", "pleural effusion",
     "disease", "yes"),
    ("g1", 1, "Atelectasis again at the left base.", "left lower lung zone", "atelectasis", "anatomicalfinding",
     "yes"),  # the same triple from another sentence: kept once
    ("g1", 2, "No left lower lobe opacity.", "left lower lung zone", "lung opacity", "anatomicalfinding", "no"),
    ("g1", 3, "The heart is enlarged.", "cardiac silhouette", "enlarged cardiac silhouette", "anatomicalfinding",
     "yes"),  # midline: no side
    ("g1", 3, "The heart is enlarged.", "cardiac silhouette", "abnormal", "nlp", "yes"),
    ("g2", 0, "Small right apical pneumothorax.", "right apical zone", "pneumothorax", "disease", "yes"),
    ("g3", 0, "Bibasilar atelectasis.", "left lower lung zone", "atelectasis", "anatomicalfinding", "yes"),
    ("g3", 0, "Bibasilar atelectasis.", "right lower lung zone", "atelectasis", "anatomicalfinding", "yes"),
    ("g4", 0, "No pneumothorax.", "right lung", "pneumothorax", "disease", "no"),
    ("g5", 0, "Right upper lobe pneumonia.", "right upper lung zone", "pneumonia", "disease", "yes"),  # no image
]


def _tree(tmp_path, gold=True):
    root, mimic = tmp_path / "chest-imagenome", tmp_path / "mimic-cxr-jpg"
    for dicom, (p, s) in IDS.items():
        if dicom != "g5":
            write_jpeg(mimic / "files" / f"p{p[:2]}" / f"p{p}" / f"s{s}" / f"{dicom}.jpg", gradient(70, 60))
    if gold:
        rows = [(IDS[d][0], IDS[d][1], f"{d}.dcm", f"{IDS[d][1]}|{k}", sent, bbox, "1", label, cat, ctx)
                for d, k, sent, bbox, label, cat, ctx in ROWS]
        rows.append(("x", "1", "g9.dcm", "1|0", "Bad row.", "left lung", "1", "atelectasis", "disease", "yes"))
        path = root / GOLD_FILE
        path.parent.mkdir(parents=True)
        lines = ["\t".join(COLUMNS)] + ["\t".join(r) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    else:  # silver scene graphs: one JSON per image
        folder = root / "silver_dataset" / "scene_graph"
        folder.mkdir(parents=True)
        for dicom, (p, s) in IDS.items():
            mine = [r for r in ROWS if r[0] == dicom]
            attrs = []
            for bbox in dict.fromkeys(r[3] for r in mine):
                here = [r for r in mine if r[3] == bbox]
                attrs.append({"bbox_name": bbox, "phrases": [r[2] for r in here],
                              "attributes": [[f"{r[5]}|{r[6]}|{r[4]}"] for r in here]})
            graph = {"image_id": dicom, "patient_id": int(p), "study_id": int(s), "objects": [], "attributes": attrs}
            (folder / f"{dicom}_SceneGraph.json").write_text(json.dumps(graph))
        (folder / "broken_SceneGraph.json").write_text("{not json")
    return root, mimic


def test_gold_triples_foils_and_counts(tmp_path):
    root, mimic = _tree(tmp_path)
    out = tmp_path / "out"
    report = prepare("chest-imagenome", PrepareOptions(root=root, out=out, size=32, progress=False,
                                                       extra={"mimic_jpg": mimic}))
    df = read_studies(out).set_index("study_id")
    assert sorted(df.index) == ["g1", "g2", "g3"]
    assert set(df["split"]) == {"test"} and df.loc["g1", "patient_id"] == "10000032"
    assert dict(df["task"]) == {"g1": "binding", "g2": "single", "g3": "binding"}
    assert df.loc["g2", "class"] == "pneumothorax"
    g1 = json.loads(df.loc["g1", "annotations"])
    assert [(a["finding"], a["side"], a["anatomy"]) for a in g1] == [
        ("atelectasis", "left", "lower lung zone"), ("pleural effusion", "right", "costophrenic angle")]
    assert df.loc["g1", "report"].startswith("Left basal atelectasis, and a small right effusion.")
    counts = {k: v["count"] for k, v in report["dropped"].items()}
    assert counts == {"malformed_row": 1, "not_a_finding": 1, "denied_finding": 2, "not_a_sided_lung_region": 1,
                      "image_without_triple": 1, "missing_image": 1}
    assert report["notes"]["repeated_triples_merged"] == 1
    cands = pd.read_csv(out / "candidates.csv")
    mine = cands[cands["study_id"] == "g1"].set_index("contrast")["text"]
    assert mine["none"] == "Atelectasis in the left lower lung zone. Pleural effusion in the right costophrenic angle."
    assert mine["swap_location"] == ("Atelectasis in the right costophrenic angle. "
                                     "Pleural effusion in the left lower lung zone.")
    assert sorted(mine["swap_location"].split()) == sorted(mine["none"].split())  # same words, another binding
    assert mine["side"] in ("Atelectasis in the right lower lung zone. Pleural effusion in the right costophrenic "
                            "angle.", "Atelectasis in the left lower lung zone. Pleural effusion in the left "
                            "costophrenic angle.")
    assert "location" in mine.index and mine["location"] != mine["none"]
    # bibasilar atelectasis: moving either one to the other side is what the gold set says -> no side foil
    g3 = set(cands.loc[cands["study_id"] == "g3", "contrast"])
    assert "side" not in g3 and "location" in g3
    with pytest.raises(BadInputError):
        prepare("chest-imagenome", PrepareOptions(root=root, out=tmp_path / "o2", strict=True, progress=False,
                                                  extra={"mimic_jpg": mimic}))


def test_scene_graphs_give_the_same_triples(tmp_path):
    gold_root, mimic = _tree(tmp_path / "a")
    sg_root, _ = _tree(tmp_path / "b", gold=False)
    a = parse(PrepareOptions(root=gold_root, out=tmp_path / "o", metadata_only=True, extra={"mimic_jpg": mimic}))
    b = parse(PrepareOptions(root=sg_root, out=tmp_path / "o", metadata_only=True, extra={"mimic_jpg": mimic}))
    cols = ["study_id", "patient_id", "annotations", "task"]
    pd.testing.assert_frame_equal(a.studies[cols].reset_index(drop=True), b.studies[cols].reset_index(drop=True))
    assert b.drops.filters["unreadable_scene_graph"].count == 1
    with pytest.raises(SourceLayoutError, match="gold_attributes_relations"):
        parse(PrepareOptions(root=mimic, out=tmp_path / "o"))


def test_foils_are_never_supported_by_the_gold_triples():
    regions = [(s, a) for s in ("left", "right") for a in LUNG_REGIONS]
    findings = ["atelectasis", "pleural effusion", "pneumothorax"]
    gen = np.random.default_rng(0)
    n_foils = 0
    for k in range(300):
        n = int(gen.integers(1, 4))
        triples = []
        for _ in range(n):
            side, anatomy = regions[int(gen.integers(len(regions)))]
            t = Triple(findings[int(gen.integers(len(findings)))], side, anatomy)
            if t not in triples:
                triples.append(t)
        cov = _covered(triples)
        cands = relation_candidates(f"s{k}", triples)
        assert cands[0][1] and sum(ok for _, ok, _ in cands) == 1
        for text, ok, contrast in cands[1:]:
            assert not ok
            n_foils += 1
            assert text != cands[0][0] and contrast in ("side", "location", "swap_location")
            # the foil states at least one triple that the gold set does not support
            stated = [s.strip() for s in text.split(".") if s.strip()]
            true_sentences = {t.sentence().rstrip(".") for t in triples}
            new = [s for s in stated if s not in true_sentences]
            assert new
            for s in new:
                finding, where = s.split(" in the ")
                side, anatomy = where.split(" ", 1)
                assert not supported(Triple(finding.lower(), side, anatomy), cov)
    assert n_foils > 300


class LeftLover(StubModel):
    """Scores a caption by how many times it says 'left'."""

    def similarity(self, img, txt):
        return torch.tensor([float(w.count("left")) for w in txt.word_strings])[None].expand(len(img), -1).clone()


def test_relations_on_prepared_gold_set(tmp_path):
    root, mimic = _tree(tmp_path)
    out = tmp_path / "out"
    prepare("chest-imagenome", PrepareOptions(root=root, out=out, size=32, progress=False,
                                              extra={"mimic_jpg": mimic}))
    cands = pd.read_csv(out / "candidates.csv")
    assert "g5" in set(cands["study_id"])  # written for every parsed image; g5's image is missing
    cands = cands[cands["study_id"].isin(read_studies(out)["study_id"])]
    res = run_relations(wrap_model(LeftLover()), out, tmp_path / "eval", RelationsConfig(n_boot=20))
    assert res.data["studies_by_task"] == {"binding": 2, "single": 1}
    expected = {}
    for contrast, g in cands[cands["is_correct"] == 0].groupby("contrast"):
        wins = []
        for sid, foil in zip(g["study_id"], g["text"]):
            true = cands[(cands["study_id"] == sid) & (cands["is_correct"] == 1)]["text"].iloc[0]
            t, f = true.lower().split().count("left"), foil.lower().split().count("left")
            wins.append(1.0 if t > f else 0.5 if t == f else 0.0)
        expected[contrast] = np.mean(wins)
    assert {k: res.metrics[k].value for k in expected} == pytest.approx(expected)
    assert set(expected) == {"side", "location", "swap_location"}
    # without candidates.csv the task builds the same foils from the table's triples
    (out / "candidates.csv").unlink()
    again = run_relations(wrap_model(LeftLover()), out, None, RelationsConfig(n_boot=20))
    assert {k: v.value for k, v in again.metrics.items()} == {k: v.value for k, v in res.metrics.items()}
