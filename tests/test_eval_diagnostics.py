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
    generate(out, n=20, size=64, seed=1, per_class=6, sets=("relations",))  # 6 single + 6 binding
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
    assert set(by["convirt"]["extra"]["not_applicable"]) == {"importance", "relations", "binding", "grounding"}
    # binding control on the multi-finding reports: own vs another finding's location words, head mean and
    # per SRM head (the aggregator's head_relations)
    m = by["reclf"]["metrics"]
    assert {"binding/own_mass", "binding/other_mass", "binding/own_minus_other", "binding/own_other_ratio",
            "binding/head_max/own_mass", "binding/head_max/other_mass"} <= set(m)
    heads = by["reclf"]["extra"]["binding_heads"]
    assert heads["heads"] >= 1 and heads["own_mass"][heads["selected"]] == max(heads["own_mass"])
    assert m["binding/head_max/own_mass"]["value"] >= m["binding/own_mass"]["value"] - 1e-6 or heads["heads"] == 1
    assert by["reclf"]["data"]["binding_reports"] == m["binding/own_mass"]["n"] > 0
    assert "binding/own_mass" in by["reclf-no-irm"]["metrics"]
    for r in results:
        m = r["metrics"]
        for v in m.values():
            assert v["ci_low"] is None or v["ci_low"] <= v["value"] <= v["ci_high"]
        assert len(r["extra"]["per_report"]["study_id"]) == 12
    # IRM weights are a distribution over the words: the relative weights average 1 over all words
    boxes = by["reclf"]["extra"]["role_boxes"]
    total = sum(b["mean"] * b["n"] for b in boxes.values()) / sum(b["n"] for b in boxes.values())
    assert total == pytest.approx(1.0, rel=1e-4)
    # the finding role, split by whether the word names a finding drawn in the image: the two parts are the role
    split = by["reclf"]["extra"]["finding_boxes"]
    assert split["linked"]["n"] > 0 and split["unlinked"]["n"] > 0
    assert split["linked"]["n"] + split["unlinked"]["n"] == boxes["finding"]["n"]
    parts = (split["linked"]["mean"] * split["linked"]["n"] + split["unlinked"]["mean"] * split["unlinked"]["n"])
    assert parts / boxes["finding"]["n"] == pytest.approx(boxes["finding"]["mean"], rel=1e-6)
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


def test_binding_stats_by_hand():
    """Finding 0 ("effusion") and finding 1 ("nodule") with their own location words: own vs other mass."""
    roles = ["severity", "location", "finding", "filler", "finding", "filler", "location", "location"]
    links = [0, 0, 0, -1, 1, -1, 1, 1]
    n = len(roles)
    rel = np.ones((n, n))
    rel[2, 1] = 5.0  # effusion -> its own side word
    rel[4, 1] = 5.0  # nodule -> the OTHER finding's side word (a binding error)
    b = diag.binding_stats(rel, roles, links)
    # row 2 over 7 other words: total 11; own {1}: 5/11, other {6, 7}: 2/11
    # row 4: total 11; own {6, 7}: 2/11, other {1}: 5/11
    assert b["own_mass"][0] == pytest.approx((5 / 11 + 2 / 11) / 2)
    assert b["other_mass"][0] == pytest.approx((2 / 11 + 5 / 11) / 2)
    assert b["own_per_word"][0] == pytest.approx((5 / 11 + 1 / 11) / 2)
    assert b["other_per_word"][0] == pytest.approx((1 / 11 + 5 / 11) / 2)
    assert float(b["finding_words"]) == 2
    # per head: head 1 binds (each finding word -> only its own location words), head 0 is uniform
    good = np.zeros((n, n))
    good[2, 1] = 1.0
    good[4, [6, 7]] = 1.0
    heads = np.stack([np.ones((n, n)), good])
    bh = diag.binding_stats(heads, roles, links)
    assert bh["own_mass"].shape == (2,) and bh["own_mass"][1] == 1.0 and bh["other_mass"][1] == 0.0
    assert bh["own_mass"][0] == pytest.approx((1 / 7 + 2 / 7) / 2)
    # a single-finding report has no other finding: not applicable
    assert diag.binding_stats(rel, roles, [0, 0, 0, -1, 0, -1, 0, 0]) is None
    own, other, info = diag.select_head([bh["own_mass"], None], [bh["other_mass"], None])
    assert info["selected"] == 1 and own[0] == 1.0 and other[0] == 0.0 and np.isnan(own[1])
    r = diag.ratio_ci(np.array([0.4, 0.6, np.nan]), np.array([0.2, 0.2, 0.5]), n_boot=50)
    assert r.value == pytest.approx(2.5) and r.n == 2


def test_oracle_binding_heads_and_head_mean(synth, monkeypatch):
    """Per-head relations from a fake aggregator: head 1 binds perfectly, head 0 looks at the other
    finding's location words. The head mean mixes them; head_max picks head 1 with other mass 0."""
    records = read_word_roles(synth)
    torch.manual_seed(0)
    model = __import__("reclf").create_model("reclf", image_encoder=IMAGE, text_encoder=TEXT)
    real = diag.model_outputs

    def fake(m, images, texts):
        o = real(m, images, texts)
        heads, rels = [], []
        for words in o.words:
            rec = next(r for r in records.values()
                       if [w.lower() for w, s in zip(r.words, r.section, strict=True)
                           if s in ("findings", "impression") and w not in ("FINDINGS", "IMPRESSION")
                           ][: len(words) - 1] == words[:-1])
            roles, links = align_roles(words, rec)
            n = len(words)
            h = np.zeros((2, n, n)) + np.eye(n)[None]
            for i in range(n):
                if roles[i] == "finding" and links[i] >= 0:
                    own = [j for j in range(n) if roles[j] == "location" and links[j] == links[i]]
                    other = [j for j in range(n) if roles[j] == "location" and links[j] >= 0 and links[j] != links[i]]
                    h[:, i] = 0.0
                    h[1, i, own] = 1.0
                    h[0, i, other or own] = 1.0
            heads.append(h)
            rels.append(h.mean(axis=0))
        return BatchOutputs(o.words, o.pieces, o.weights, rels, o.argmax, o.grid, heads)

    monkeypatch.setattr(diag, "model_outputs", fake)
    res = run_diagnostics(wrap_model(model), synth, None, DiagnosticsConfig(n_boot=50))
    m = res.metrics
    assert 0.3 < m["binding/own_mass"].value < 0.7 and 0.2 < m["binding/other_mass"].value < 0.7  # mixed heads
    assert m["binding/head_max/own_mass"].value == 1.0 and m["binding/head_max/other_mass"].value == 0.0
    assert res.extra["binding_heads"]["selected"] == 1 and "head_relations" in res.extra["binding_heads"]["source"]
    assert m["binding/own_mass"].n == res.data["binding_reports"] == 6  # the 6 binding studies

    # without per-head relations the head mean stands in
    def no_heads(m_, images, texts):
        o = fake(m_, images, texts)
        return BatchOutputs(o.words, o.pieces, o.weights, o.relations, o.argmax, o.grid, None)

    monkeypatch.setattr(diag, "model_outputs", no_heads)
    res = run_diagnostics(wrap_model(model), synth, None, DiagnosticsConfig(n_boot=20))
    assert res.extra["binding_heads"]["heads"] == 1 and "head mean" in res.extra["binding_heads"]["source"]
    assert res.metrics["binding/head_max/own_mass"].value == pytest.approx(m["binding/own_mass"].value)


def test_grounding_uses_the_models_word_region_attention(synth, monkeypatch):
    """Diagnostics' word -> region argmax is model.word_region_attention's (GLoRIA's learned scale included),
    not a recomputation."""
    from reclf.methods import create_model

    torch.manual_seed(0)
    model = create_model("gloria", image_encoder=IMAGE, text_encoder=TEXT)
    calls = []
    real = type(model).word_region_attention

    def spy(self, img, txt):
        out = real(self, img, txt)
        calls.append(out.shape)
        flipped = torch.zeros_like(out)
        flipped[..., -1] = 1.0  # every word points at the last region
        return flipped

    monkeypatch.setattr(type(model), "word_region_attention", spy)
    images = torch.rand(2, 1, 64, 64)
    outs = diag.model_outputs(model, images, ["Small left pleural effusion.", "Right upper lobe nodule."])
    assert calls and all((a == calls[0][-1] - 1).all() for a in outs.argmax)


def test_each_method_has_its_own_random_init_floor(synth):
    """floor/* metrics are the diagnostics of the same architecture with random weights (FLOOR_SEED): for
    GLoRIA a random GLoRIA (double softmax), for RECLF a random RECLF; a floor itself gets none."""
    from reclf.evaluate.baselines import FLOOR_SEED, fresh_like
    from reclf.methods import create_model

    cfg = DiagnosticsConfig(n_boot=20)
    floors = {}
    for method in ("gloria", "reclf"):
        torch.manual_seed(0)
        model = create_model(method, image_encoder=IMAGE, text_encoder=TEXT)
        res = run_diagnostics(wrap_model(model), synth, None, cfg)
        twin = run_diagnostics(wrap_model(fresh_like(model, FLOOR_SEED), label="floor:random"), synth, None, cfg)
        assert not any(k.startswith("floor/") for k in twin.metrics) and "not_measured" in twin.extra["floor"]
        for key, value in twin.metrics.items():
            if not key.startswith("reference/"):
                assert res.metrics[f"floor/{key}"].value == pytest.approx(value.value, nan_ok=True), key
        floors[method] = res.metrics["floor/importance/auroc"].value
    assert "floor/relations/own_mass" in res.metrics  # RECLF's floor has relations (SRM), GLoRIA's none
    assert floors["gloria"] != floors["reclf"]
