import json

import pandas as pd
import torch

from helpers.eval_stub import StubModel, make_folder
from reclf.evaluate.loading import wrap_model
from reclf.evaluate.tasks.grounding import GroundingConfig, finding_phrases, locate, run_grounding
from reclf.evaluate.tasks.relations import RelationsConfig, run_relations, wins


class SideLover(StubModel):
    """Scores a caption 1 if it says 'left', 0 otherwise: the true caption wins only on left images."""

    def similarity(self, img, txt):
        says_left = torch.tensor([float("left" in w) for w in txt.word_strings])
        return says_left[None].expand(len(img), -1).clone()


def test_wins_counts_ties_as_half():
    assert wins(0.9, 0.1) == 1.0 and wins(0.1, 0.9) == 0.0 and wins(0.5, 0.5) == 0.5
    # float32 rounding is a tie (the same words summed in another order), a real difference is not
    assert wins(3.0, 3.0 + 2e-6) == 0.5 and wins(1e-3, 1e-3 - 5e-7) == 0.5
    assert wins(3.0, 3.0 - 1e-4) == 1.0 and wins(1e-3, 1e-3 + 2e-5) == 0.0


def test_relations_picks_the_higher_scored_caption(tmp_path):
    data = make_folder(tmp_path / "data", n=8)
    res = run_relations(wrap_model(SideLover()), data, tmp_path / "out", RelationsConfig(n_boot=20, split=None))
    cands = pd.read_csv(data / "candidates.csv")
    studies = pd.read_csv(data / "studies.csv")
    # by hand: a study's side foil loses iff the true caption says "left" and the foil does not
    expected = []
    for sid, g in cands[cands["contrast"] == "side"].groupby("study_id"):
        true = cands[(cands["study_id"] == sid) & (cands["is_correct"] == 1)]["text"].iloc[0]
        foil = g["text"].iloc[0]
        t, f = float("left" in true.split()), float("left" in foil.split())
        expected.append(1.0 if t > f else 0.5 if t == f else 0.0)
    assert len(expected) == len(studies)
    assert res.metrics["side"].value == sum(expected) / len(expected)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["metrics"]) == {"side", "negation", "all_foils"}


def test_grounding_words_and_end_to_end(tmp_path):
    assert locate(["a", "small", "left", "pleural", "effusion."], finding_phrases("pleural_effusion")) == [3, 4]
    assert locate(["no", "findings"], finding_phrases("pneumothorax")) == []
    torch.manual_seed(0)
    data = make_folder(tmp_path / "data", n=8)
    res = run_grounding(wrap_model(StubModel()), data, tmp_path / "out", GroundingConfig(n_boot=20))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert 0 <= saved["metrics"]["pointing_game"]["value"] <= 1
    assert saved["data"]["pairs"] + saved["data"]["unmatched_findings"] == 6  # 6 of 8 images have a finding
    assert res.extra["samples"]
    # a global-only method: the task says it does not apply instead of failing
    glob = StubModel()
    glob.explain = lambda image, report: type("E", (), {"attention": None, "words": []})()
    res = run_grounding(wrap_model(glob), data, tmp_path / "out2", GroundingConfig(n_boot=20))
    assert res.metrics == {} and "not_applicable" in res.extra


def test_relations_and_grounding_read_real_synthcxr(tmp_path):
    """SynthCXR's own relations/ folder (candidates.csv, annotations with per-finding masks) is understood."""
    from reclf.data.synthetic.generate import generate

    generate(tmp_path / "synth", n=20, size=64, per_class=6, sets=("relations",))
    data = tmp_path / "synth" / "relations"
    torch.manual_seed(0)
    res = run_relations(wrap_model(StubModel()), data, None, RelationsConfig(n_boot=20, split=None))
    assert {"side", "negation", "all_foils", "all_foils_single", "all_foils_binding", "swap_side",
            "flip_sides"} <= set(res.metrics)
    assert res.data["used"] == 12 and res.data["studies_by_task"] == {"binding": 6, "single": 6}
    res = run_grounding(wrap_model(StubModel()), data, None, GroundingConfig(n_boot=20))
    assert res.data["pairs"] >= 4  # most relational findings are named by a synonym in their report


def _tiny(method: str, **overrides):
    from reclf.methods import create_model

    torch.manual_seed(0)
    return create_model(method, image_encoder={"name": "cnn-small", "image_size": 64},
                        text_encoder={"name": "bert-tiny", "max_tokens": 32}, **overrides)


def test_relations_fused_scores_are_per_pair(tmp_path):
    """Each (image, caption) score in relations equals that pair scored alone: no candidate-set statistics,
    so two-candidate contrasts are decided by the pair scores, not by float noise around 0."""
    from reclf.evaluate.features import encode_images, encode_texts

    data = make_folder(tmp_path / "data", n=6)
    model = _tiny("gloria")
    res = run_relations(wrap_model(model), data, tmp_path / "out", RelationsConfig(n_boot=5, split=None))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["metrics"]) >= {"side", "all_foils"} and res.metrics["all_foils"].n == 6
    cands = pd.read_csv(data / "candidates.csv")
    studies = pd.read_csv(data / "studies.csv")
    img, _ = encode_images(model, [data / p for p in studies["image_path"]], 64)
    with torch.no_grad():
        for i, sid in enumerate(studies["study_id"]):
            texts = cands[cands["study_id"] == sid]["text"].tolist()
            both = model.similarity(img.index(slice(i, i + 1)), encode_texts(model, texts))[0]
            alone = torch.stack([model.similarity(img.index(slice(i, i + 1)), encode_texts(model, [t]))[0, 0]
                                 for t in texts])
            torch.testing.assert_close(both, alone, atol=1e-5, rtol=1e-5)
            assert both.std() > 1e-3  # the contrast is decided by a real difference, not by noise around 0


def test_attention_entropy_reports_flat_and_sharp_attention(tmp_path):
    from reclf.evaluate.tasks.grounding import attention_entropy

    images = torch.rand(3, 1, 64, 64)
    reports = ["small left effusion.", "right lower lobe opacity.", "no pneumothorax."]
    flat = attention_entropy(_tiny("gloria", match_scale=1.0), images, reports)
    sharp = attention_entropy(_tiny("gloria"), images, reports)
    assert len(flat.per_pair) == 3 and flat.n_words == 9 and flat.n_regions == 16
    assert 0 <= sharp.mean < flat.mean <= 1
    assert flat.mean > 0.99  # GLoRIA's double softmax on bare cosines: uniform
    data = make_folder(tmp_path / "data", n=4)
    res = run_grounding(wrap_model(_tiny("gloria")), data, tmp_path / "g", GroundingConfig(n_boot=5))
    saved = json.loads((tmp_path / "g" / "results.json").read_text())
    assert 0 <= saved["metrics"]["attention_entropy"]["value"] <= 1
    assert res.extra["attention_entropy"]["n_images"] == 3  # the 3 images with a finding


def test_relations_split_and_binding_contrasts(tmp_path):
    """--split keeps one split (default test); binding contrasts and all_foils per study kind are reported."""
    from reclf.data.synthetic.generate import generate

    generate(tmp_path / "synth", n=20, size=64, per_class=4, sets=("relations",))
    data = tmp_path / "synth" / "relations"
    studies = pd.read_csv(data / "studies.csv")
    assert set(studies["split"]) == {"valid", "test"}
    model = wrap_model(SideLover())
    test = run_relations(model, data, None, RelationsConfig(n_boot=20))
    valid = run_relations(model, data, None, RelationsConfig(n_boot=20, split="valid"))
    both = run_relations(model, data, None, RelationsConfig(n_boot=20, split="all"))
    assert test.data["used"] == (studies["split"] == "test").sum() == 4
    assert valid.data["used"] == 4 and both.data["used"] == 8 and test.data["split"] == "test"
    assert test.metrics["all_foils_single"].n + test.metrics["all_foils_binding"].n == test.metrics["all_foils"].n
    cands = pd.read_csv(data / "candidates.csv")
    binding = set(studies.loc[studies["task"] == "binding", "study_id"])
    assert set(cands.loc[cands["contrast"].isin(["swap_side", "swap_zone", "flip_sides"]), "study_id"]) <= binding
    # a side-word counter cannot tell a swap_side foil from its caption (same words): a tie, 0.5
    if "swap_side" in both.metrics:
        assert both.metrics["swap_side"].value == 0.5
    # the --split option reaches the config
    import argparse

    from reclf.evaluate import cli as eval_cli

    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    args = parser.parse_args(["relations", "--model", "m", "--data", str(data), "--split", "valid"])
    assert eval_cli.given(RelationsConfig, vars(args))["split"] == "valid"
    assert RelationsConfig().split == "test"


def test_grounding_floor_is_a_random_init_of_the_same_architecture(tmp_path):
    """Each method's grounding result carries its own floor: the same method and encoders with random weights
    (FLOOR_SEED), scored on the same images; a GLoRIA is compared with a random GLoRIA, not a random RECLF."""
    from reclf.evaluate.baselines import FLOOR_SEED, fresh_like
    data = make_folder(tmp_path / "data", n=4)
    floors = {}
    for method in ("gloria", "reclf"):
        model = _tiny(method)
        res = run_grounding(wrap_model(model), data, None, GroundingConfig(n_boot=5))
        assert {"floor/pointing_game", "floor/attention_iou", "floor/attention_entropy"} <= set(res.metrics)
        assert res.extra["floor"]["seed"] == FLOOR_SEED
        twin = fresh_like(model, FLOOR_SEED)
        floors[method] = res.metrics["floor/attention_entropy"].value
        # the floor is the twin's own number: scoring the twin as a model gives the same entropy
        alone = run_grounding(wrap_model(twin, label="floor:random"), data, None, GroundingConfig(n_boot=5))
        assert alone.metrics["attention_entropy"].value == floors[method]
        assert not any(k.startswith("floor/") for k in alone.metrics)  # a floor has no floor of its own
        assert "not_measured" in alone.extra["floor"]
    assert floors["gloria"] != floors["reclf"]  # two architectures, two floors
    # a model reclf cannot rebuild (the stub) is scored without a floor, and says so
    res = run_grounding(wrap_model(StubModel()), data, None, GroundingConfig(n_boot=5))
    assert not any(k.startswith("floor/") for k in res.metrics) and "not_measured" in res.extra["floor"]
