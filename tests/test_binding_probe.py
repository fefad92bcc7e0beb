"""benchmarks/binding_probe.py: on a tiny SynthCXR binding set and tiny untrained models, its shares are shares
and SRM's graph measure says which words SRM reasons over (every word when ``srm_topk=0``, few when 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers.benchmarks import benchmark_module
from reclf.data.synthetic.generate import generate
from reclf.methods import create_model

IMAGE = {"name": "cnn-small", "image_size": 64}
TEXT = {"name": "bert-tiny", "max_tokens": 48}
SHARES = ("text_cos_true_vs_swap", "side_word_mass_on_named_half", "finding_word_on_own_half")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "synth"
    generate(out, n=20, size=64, seed=4, per_class=6, sets=("relations",))
    return out


@pytest.fixture(scope="module")
def probe_module():
    with benchmark_module("binding_probe") as module:
        yield module


def _probe(module, synth: Path, method: str, **kwargs) -> dict:
    torch.manual_seed(0)
    model = create_model(method, image_encoder=IMAGE, text_encoder=TEXT, **kwargs).eval()
    return module.probe(model, synth)


def test_srm_over_every_word_keeps_every_finding_and_side_word(probe_module, synth):
    every = _probe(probe_module, synth, "reclf", srm_topk=0)
    assert every["binding_studies"] > 0
    for key in ("global", "local", "method"):
        assert 0.0 <= every["swap_side"][key] <= 1.0
    for key in SHARES:
        assert every[key] is not None and 0.0 <= every[key] <= 1.0 + 1e-6
    assert every["srm_keeps_finding_word"] == 1.0 and every["srm_keeps_side_word"] == 1.0
    # one word node (and the global node) per caption: at most one of its >= 4 finding and side words is kept
    one = _probe(probe_module, synth, "reclf", srm_topk=1)
    assert one["srm_keeps_finding_word"] <= 0.5 and one["srm_keeps_side_word"] <= 0.5
    assert one["binding_studies"] == every["binding_studies"]


def test_no_srm_has_no_graph_to_measure(probe_module, synth):
    res = _probe(probe_module, synth, "reclf-no-srm")
    assert res["srm_keeps_finding_word"] is None and res["srm_keeps_side_word"] is None
    assert res["finding_word_on_own_half"] is not None


def test_split_and_serving_srm_over_another_graph(probe_module, synth):
    torch.manual_seed(0)
    model = create_model("reclf", image_encoder=IMAGE, text_encoder=TEXT, srm_topk=1).eval()
    both = probe_module.probe(model, synth)
    valid = probe_module.probe(model, synth, "valid")
    test = probe_module.probe(model, synth, "test")
    assert 0 < valid["binding_studies"] < both["binding_studies"]
    assert valid["binding_studies"] + test["binding_studies"] == both["binding_studies"]
    probe_module.set_srm_topk(model, 0)  # trained over one word node, served over every node
    assert probe_module.probe(model, synth)["srm_keeps_finding_word"] == 1.0
    with pytest.raises(SystemExit, match="no SRM"):
        probe_module.set_srm_topk(create_model("reclf-no-srm", image_encoder=IMAGE, text_encoder=TEXT), 8)


def test_a_tie_counts_half(probe_module, synth):
    """With every word encoded alone a report and its side-swapped twin are the same bag: the global score ties on
    every foil, and a tie counts half (as in ``reclf evaluate relations``), not as a loss."""
    torch.manual_seed(0)
    model = create_model("reclf", image_encoder=IMAGE, text_encoder={**TEXT, "context": "word"}).eval()
    res = probe_module.probe(model, synth)
    assert res["text_cos_true_vs_swap"] == pytest.approx(1.0, abs=1e-4)
    assert res["swap_side"]["global"] == 0.5
