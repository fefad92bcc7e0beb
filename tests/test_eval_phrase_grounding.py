"""Phrase grounding (BioViL's metrics): CNR and mIoU by hand, an oracle and an inverted map, SynthCXR's captions
as phrases, the methods without local features, and the demo's call."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from reclf.evaluate.loading import wrap_model
from reclf.evaluate.metrics import contrast_to_noise, threshold_iou
from reclf.evaluate.tasks.phrase_grounding import (
    PhraseGroundingConfig,
    pair_metrics,
    read_phrases,
    run_phrase_grounding,
)


def test_cnr_and_threshold_iou_by_hand():
    m = np.array([[1.0, 2.0], [3.0, 4.0]])
    inside = np.array([[False, False], [False, True]])
    # inside {4}: mean 4, var 0; outside {1, 2, 3}: mean 2, var 2/3
    assert contrast_to_noise(m, inside) == pytest.approx(2 / np.sqrt(2 / 3))
    assert contrast_to_noise(-m, inside) == pytest.approx(2 / np.sqrt(2 / 3))  # BioViL's |.|
    assert contrast_to_noise(-m, inside, signed=True) == pytest.approx(-2 / np.sqrt(2 / 3))
    # a pixel that is not part of the radiograph (padding) is neither inside nor outside: outside {2, 3}
    valid = np.array([[False, True], [True, True]])
    assert contrast_to_noise(m, inside, valid) == pytest.approx(1.5 / np.sqrt(0.25))
    assert np.isnan(contrast_to_noise(m, np.zeros_like(inside)))
    # >= 2.5 selects {3, 4}: IoU 1/2; >= 3.5 selects {4}: IoU 1; >= 9 selects nothing: IoU 0
    assert threshold_iou(m, inside, [2.5, 3.5, 9.0]) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert threshold_iou(m, inside, [2.5], valid=np.array([[True, True], [False, True]])) == pytest.approx(1.0)


def test_oracle_and_inverted_maps():
    size, grid = 64, 8
    target = np.zeros((size, size), dtype=bool)
    target[16:40, 8:32] = True  # whole 8-pixel cells: the grid can say exactly this
    valid = np.ones_like(target)
    cells = target.reshape(grid, 8, grid, 8).any(axis=(1, 3)).astype(float)
    noise = np.random.default_rng(0).uniform(0, 0.05, cells.shape)
    good = pair_metrics(0.8 * cells + noise, target, valid, PhraseGroundingConfig())
    assert good["miou"] == pytest.approx(1.0) and good["pointing_game"] == 1.0 and good["cnr"] > 10
    bad = pair_metrics(0.8 * (1 - cells) + noise, target, valid, PhraseGroundingConfig())
    assert bad["miou"] == pytest.approx(0.0) and bad["pointing_game"] == 0.0
    assert bad["cnr"] > 10 and bad["cnr_signed"] < -10  # BioViL's |.| hides the direction; the signed one shows it
    # the attention map is thresholded after min-max scaling: any positive scale of the oracle scores 1
    att = pair_metrics(1e-3 * (cells + noise), target, valid, PhraseGroundingConfig(map="attention"))
    assert att["miou"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from reclf.data.synthetic.generate import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, n=20, size=64, per_class=4, sets=("relations",))
    return root / "relations"


def _tiny(method: str):
    from reclf.methods import create_model

    torch.manual_seed(0)
    return create_model(method, image_encoder={"name": "cnn-small", "image_size": 64},
                        text_encoder={"name": "bert-tiny", "max_tokens": 32})


def test_synthcxr_phrases_are_the_caption_sentences(synth):
    df = pd.read_csv(synth / "studies.csv", dtype=str, keep_default_na=False)
    pset = read_phrases(df, synth, PhraseGroundingConfig())
    anns = [json.loads(a) for a in df["annotations"]]
    assert pset.source == "synthcxr captions" and not pset.skipped
    assert len(pset.phrases) == sum(len(a) for a in anns)  # every relational finding is present, none hedged
    by_row: dict[int, int] = {}
    for p in pset.phrases:
        k = by_row.get(p.row, 0)
        by_row[p.row] = k + 1
        ann = anns[p.row][k]
        # sentence k of the true caption describes annotation k: its finding and its side
        assert p.category == ann["finding"] and p.mask == ann["mask"]
        assert ann["side"] in p.phrase.lower().split(), (p.phrase, ann)


def test_phrase_grounding_on_synthcxr_for_local_methods_and_not_convirt(synth, tmp_path):
    from reclf.evaluate.baselines import make_random
    from reclf.evaluate.cli import run_task
    from reclf.evaluate.loading import load_model

    df = pd.read_csv(synth / "studies.csv", dtype=str, keep_default_na=False)
    n_pairs = sum(len(json.loads(a)) for a in df["annotations"])
    model = _tiny("reclf")
    for kind in ("similarity", "attention"):
        cfg = PhraseGroundingConfig(n_boot=20, map=kind)
        res = run_phrase_grounding(wrap_model(model), synth, tmp_path / kind, cfg)
        assert res.data["pairs"] == n_pairs and res.data["phrases_from"] == "synthcxr captions"
        assert set(res.extra["per_category"]) <= {"atelectasis", "consolidation", "pleural_effusion", "pneumothorax",
                                                  "pneumonia", "lung_lesion"}
        assert sum(c["n"] for c in res.extra["per_category"].values()) == n_pairs
        assert 0 <= res.metrics["miou"].value <= 1 and res.metrics["cnr"].value >= 0
    # the demo's call: the floor (a random-init twin) through run_task with the demo's typed task config
    from reclf.demo.settings import QUICK, eval_config

    floor = load_model(make_random(model, tmp_path / "floor", seed=1))
    cfg = eval_config("phrase-grounding", dataclasses.replace(QUICK, n_boot=10, image_size=64))
    assert isinstance(cfg, PhraseGroundingConfig) and cfg.n_boot == 10 and cfg.image_size == 64
    res = run_task("phrase-grounding", floor, synth, tmp_path / "floor-eval", cfg)
    assert res.data["pairs"] == n_pairs
    saved = json.loads((tmp_path / "floor-eval" / "results.json").read_text())
    assert saved["task"] == "phrase-grounding" and set(saved["metrics"]) == {"cnr", "cnr_signed", "miou",
                                                                            "pointing_game"}
    # ConVIRT has no word-region maps: the task says so instead of failing
    res = run_phrase_grounding(wrap_model(_tiny("convirt")), synth, tmp_path / "convirt",
                               PhraseGroundingConfig(n_boot=5))
    assert res.metrics == {} and "not_applicable" in res.extra


def test_bad_annotations_are_counted(tmp_path):
    df = pd.DataFrame({
        "study_id": ["a", "b", "c"],
        "annotations": [
            json.dumps([{"phrase": "Left effusion", "category": "Pleural Effusion", "boxes": [[0.1, 0.2, 0.3, 0.4]]}]),
            json.dumps([{"phrase": "Right opacity", "boxes": [[0.1, 0.2, 0.0, 0.4]]}]),  # zero width
            "{not json",
        ],
    })
    pset = read_phrases(df, tmp_path, PhraseGroundingConfig())
    assert [p.study_id for p in pset.phrases] == ["a"]
    assert {k: v["count"] for k, v in pset.skipped.items()} == {"bad_phrase_or_box": 1, "annotations_not_json": 1}
    with pytest.raises(ValueError, match="candidates.csv"):
        read_phrases(df.iloc[2:], tmp_path, PhraseGroundingConfig())
