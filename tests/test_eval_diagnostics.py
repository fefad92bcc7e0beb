"""The diagnostics task: per-report statistics on hand-made inputs, an oracle run, and the real tiny models."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from reclf.evaluate.loading import wrap_model
from reclf.evaluate.results import read_results
from reclf.evaluate.tasks import diagnostics as diag
from reclf.evaluate.tasks.diagnostics import (
    BatchOutputs,
    DiagnosticsConfig,
    RoleRecord,
    align_roles,
    diagnostics_table,
    grounding_stats,
    importance_stats,
    paired_difference,
    ranked_words,
    read_word_roles,
    relation_stats,
    run_diagnostics,
)

IMAGE = {"name": "cnn-small", "image_size": 64}
TEXT = {"name": "bert-tiny"}


def test_importance_stats_by_hand():
    roles = ["filler", "severity", "finding", "filler", "anatomy", "location"]
    perfect = importance_stats(np.array([0.0, 0.3, 0.4, 0.0, 0.1, 0.2]), roles)
    assert perfect["auroc"] == 1.0 and perfect["share"] == pytest.approx(0.9) and perfect["uniform_share"] == 0.5
    inverted = importance_stats(np.array([0.5, 0.0, 0.0, 0.5, 0.0, 0.0]), roles)
    assert inverted["auroc"] == 0.0 and inverted["share"] == 0.0
    assert importance_stats(np.full(6, 1 / 6), roles)["auroc"] == 0.5  # ties: chance


def test_relation_stats_by_hand():
    roles = ["severity", "finding", "filler", "filler", "location", "location", "filler", "filler"]
    links = [0, 0, -1, -1, 0, 0, -1, -1]
    n = len(roles)
    rel = np.full((n, n), 1.0)
    rel[1, 4] = rel[1, 5] = 10.0  # the finding word attends to its own location words
    s = relation_stats(rel, roles, links, np.random.default_rng(0), shuffles=200)
    assert s["own_mass"] == pytest.approx(20 / 25) and s["own_rr"] == 1.0 and s["top1"] == 1.0
    assert s["shuffled_mass"] < 0.5 and s["shuffled_rr"] < 1.0
    assert s["nearest_mass"] == pytest.approx(2 / 25)  # words 0 and 2 are nearest to word 1
    assert s["filler_mass"] == pytest.approx(2 / 7)  # filler rows are uniform over 7 other words
    assert relation_stats(rel, ["filler"] * n, [-1] * n, np.random.default_rng(0)) is None
    # uniform rows: own mass equals chance (2 of 7 other words)
    u = relation_stats(np.ones((n, n)), roles, links, np.random.default_rng(0), shuffles=400)
    assert u["own_mass"] == pytest.approx(2 / 7) and abs(u["shuffled_mass"] - 2 / 7) < 1e-9


def test_grounding_stats_by_hand():
    masks = [np.array([True, False, False, False])]
    union = masks[0]
    g = grounding_stats(np.array([0, 1, 0, 2]), ["finding", "location", "filler", "cue"], [0, 0, -1, -1],
                        masks, union)
    assert g["finding"] == (1.0, 0.25) and g["location"] == (0.0, 0.25) and g["filler"] == (1.0, 0.25)
    assert "cue" not in g  # an unlinked cue (a negation) has no mask to point into


def test_align_roles_handles_sections_case_and_truncation():
    rec = RoleRecord("s", ["FINDINGS", "Small", "left", "effusion", "IMPRESSION", "Small", "left", "effusion"],
                     ["header", "severity", "location", "finding", "header", "severity", "location", "finding"],
                     [-1, 0, 0, 0, -1, 0, 0, 0])
    roles, links = align_roles(["small", "left", "effusion", "small", "left", "eff"], rec)
    assert roles == ["severity", "location", "finding", "severity", "location", "unknown"]
    assert links == [0, 0, 0, 0, 0, -1]


def test_ranked_words_orders_by_weight_and_marks_roles():
    out = ranked_words(["of", "effusion", "left"], [0.1, 0.6, 0.3], ["filler", "finding", "unknown"])
    assert [(w["word"], w["role"]) for w in out] == [("effusion", "finding"), ("left", None), ("of", "filler")]
    with pytest.raises(ValueError, match="3 words, 2 weights"):
        ranked_words(["a", "b", "c"], [1, 2])


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from reclf.data.synthetic.generate import generate

    out = tmp_path_factory.mktemp("diag") / "synth"
    generate(out, n=20, size=64, seed=1, per_class=12, sets=("relations",))
    return out / "relations"


def test_oracle_weights_and_relations_score_perfectly(synth, monkeypatch):
    """Outputs built from the true roles must give AUROC 1, own mass 1 and pointing 1: the task reads
    the roles, aligns them and aggregates without losing or mixing words."""
    records = read_word_roles(synth)
    torch.manual_seed(0)
    model = __import__("reclf").create_model("reclf", image_encoder=IMAGE, text_encoder=TEXT)
    real = diag.model_outputs

    def oracle(m, images, texts):
        o = real(m, images, texts)
        weights, rels, argmax = [], [], []
        for words in o.words:
            rec = next(r for r in records.values()  # the model reads findings + impression, maybe truncated
                       if [w.lower() for w, s in zip(r.words, r.section, strict=True)
                           if s in ("findings", "impression") and w not in ("FINDINGS", "IMPRESSION")
                           ][: len(words) - 1] == words[:-1])
            roles, links = align_roles(words, rec)
            w = np.array([1.0 if r in ("finding", "location", "severity", "cue") else 0.0 for r in roles])
            weights.append(w / w.sum())
            n = len(words)
            rel = np.eye(n)
            for i in range(n):
                if roles[i] == "finding" and links[i] >= 0:
                    rel[i] = [1.0 if (roles[j] == "location" and links[j] == links[i]) else 0.0 for j in range(n)]
            rels.append(rel)
            argmax.append(np.zeros(n, dtype=int))
        return BatchOutputs(o.words, o.pieces, weights, rels, argmax, o.grid)

    monkeypatch.setattr(diag, "model_outputs", oracle)
    res = run_diagnostics(wrap_model(model), synth, None, DiagnosticsConfig(n_boot=50))
    assert res.metrics["importance/auroc"].value == 1.0
    assert res.metrics["relations/own_mass"].value == 1.0 and res.metrics["relations/own_mrr"].value == 1.0
    assert res.metrics["relations/shuffled_mass"].value < 0.6
    assert res.data["unknown_word_share"] < 0.02 and res.data["used"] == 12


def _run_cli(argv):
    from reclf.evaluate import cli as eval_cli

    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    return eval_cli.run(parser.parse_args(argv))


def test_every_method_on_tiny_models(synth, tmp_path):
    from reclf.methods import create_model
    from reclf.viz.diagnostics import importance_by_role, relation_mass

    results = []
    for method in ("reclf", "reclf-no-irm", "reclf-no-srm", "mgca", "convirt"):
        torch.manual_seed(0)
        create_model(method, image_encoder=IMAGE, text_encoder=TEXT).save_pretrained(tmp_path / method)
        _run_cli(["diagnostics", "--model", str(tmp_path / method), "--data", str(synth), "--n-boot", "30",
                  "--out", str(tmp_path / "runs" / method)])
        results.append(read_results(tmp_path / "runs" / method))
    by = {r["model"]["method"]: r for r in results}
    assert {"importance/auroc", "relations/own_mass", "grounding/finding", "grounding/filler_chance"} <= set(
        by["reclf"]["metrics"])
    assert "relations/own_mass" in by["reclf-no-irm"]["metrics"]
    assert "relations/own_mass" not in by["reclf-no-srm"]["metrics"]
    assert "IRM" in by["reclf"]["config"]["word_weights"] and "implicit" in by["reclf-no-irm"]["config"]["word_weights"]
    assert "CLS" in by["mgca"]["config"]["word_weights"] and "importance/auroc" in by["mgca"]["metrics"]
    assert set(by["convirt"]["extra"]["not_applicable"]) == {"importance", "relations", "grounding"}
    for r in results:
        m = r["metrics"]
        for v in m.values():
            assert v["ci_low"] is None or v["ci_low"] <= v["value"] <= v["ci_high"]
        assert len(r["extra"]["per_report"]["study_id"]) == 12
    # IRM weights are a distribution over the words: the relative weights average 1 over all words
    boxes = by["reclf"]["extra"]["role_boxes"]
    total = sum(b["mean"] * b["n"] for b in boxes.values()) / sum(b["n"] for b in boxes.values())
    assert total == pytest.approx(1.0, rel=1e-4)
    table = diagnostics_table(results, n_boot=30)
    assert "| reclf − reclf-no-irm |" in table and "| reclf − reclf-no-srm |" in table
    # a random-init floor of the reference's method listed first is never taken as the reference
    floor = json.loads(json.dumps(by["reclf-no-irm"]))
    floor["model"].update(label="floor:random", method="reclf")
    assert diagnostics_table([floor, *results], n_boot=30).split("Paired")[1] == table.split("Paired")[1]
    assert table.count("\n| ") >= 5 + 2
    same = paired_difference(by["reclf"], by["reclf"], "importance_auroc", n_boot=30)
    assert same.value == 0.0 and same.n > 0
    assert importance_by_role(results, tmp_path / "imp.png").stat().st_size > 1000
    assert relation_mass(results, tmp_path / "rel.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "runs" / "reclf" / "results.json").read_text())
    assert saved["task"] == "diagnostics" and saved["extra"]["samples"][0]["ranked"][0]["weight"] > 0


def test_missing_roles_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="word_roles.jsonl"):
        read_word_roles(tmp_path)
    line = {"study_id": "a", "words": ["x"], "roles": ["bogus"], "finding": [-1]}
    (tmp_path / "word_roles.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(ValueError, match="line 1 .*unknown role"):
        read_word_roles(tmp_path)
