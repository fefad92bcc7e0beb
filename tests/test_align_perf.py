"""The fast paths of issue 14 give the results of the straightforward formulas (values and gradients).

The references (benchmarks/reference_local.py) are the formulas as first written (explicit word -> region
softmax stored in full, the ``[P, N, N]`` edge mask, the mask applied to the large product): every
optimisation is checked against them, with padded words full of garbage so that padding could be seen
to leak.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reclf.align.aggregators import build_aggregator, build_edge_mask, key_padding_mask
from reclf.align.losses import info_nce
from reclf.align.matching import _attend_grouped, pairwise_local_scores

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from reference_local import reference_context, reference_relation_scores  # noqa: E402

D = 16


def batch(n=5, n_words=9, n_reg=6, seed=0, garbage=True):
    g = torch.Generator().manual_seed(seed)
    words = F.normalize(torch.randn(n, n_words, D, generator=g), dim=-1)
    mask = torch.ones(n, n_words, dtype=torch.bool)
    mask[1, 5:] = False
    mask[3, 2:] = False
    mask[4, 7:] = False
    if garbage:  # padded words are garbage: they must not change anything
        words = torch.where(mask.unsqueeze(-1), words, 40 * torch.randn(n, n_words, D, generator=g))
    sent = (torch.arange(n_words) // 3).repeat(n, 1).masked_fill(~mask, -1)
    return {
        "words": words,
        "word_mask": mask,
        "sentence_ids": sent,
        "regions": F.normalize(torch.randn(n, n_reg, D, generator=g), dim=-1),
        "img_global": F.normalize(torch.randn(n, D, generator=g), dim=-1),
        "txt_global": F.normalize(torch.randn(n, D, generator=g), dim=-1),
    }


def _grads(fn, b, params):
    leaves = {k: b[k].clone().requires_grad_(True) for k in ("words", "regions", "img_global", "txt_global")}
    out = fn({**b, **leaves})
    info_nce(out / 0.1).backward()
    res = [out.detach()] + [leaves[k].grad.clone() for k in ("regions", "img_global", "txt_global")]
    res.append(leaves["words"].grad.clone() * b["word_mask"].unsqueeze(-1))  # padded words: no gradient either way
    res += [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return res


@pytest.mark.parametrize("shared", [True, False])
def test_fused_softmax_matcher_equals_explicit_attention(shared):
    b = batch(garbage=False)
    words = b["words"].clone().requires_grad_(True)
    regions = b["regions"].clone().requires_grad_(True)
    grouped = words.unsqueeze(0) if shared else words.unsqueeze(0).expand(5, -1, -1, -1)
    fast, attn = _attend_grouped(grouped, regions, 0.1, "softmax", None, True, need_attention=False)
    assert attn is None
    ref = reference_context(words, regions, 0.1)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(ref)
    g_fast = torch.autograd.grad((fast * w).sum(), (words, regions))
    g_ref = torch.autograd.grad((ref * w).sum(), (words, regions))
    for a, c in zip(g_fast, g_ref):
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["srm+irm", "irm", "srm+lse"])
@pytest.mark.parametrize("checkpoint", [False, True])
def test_local_scores_and_gradients_equal_the_reference(name, checkpoint):
    torch.manual_seed(0)
    b = batch()
    agg = build_aggregator(name, D, d_z=8, heads=2, layers=2)
    params = [p for p in agg.parameters()]

    def fast(x):
        return pairwise_local_scores(**x, aggregator=agg, chunk_size=2, checkpoint=checkpoint)

    def ref(x):
        ctx = reference_context(x["words"], x["regions"], 0.1)
        return reference_relation_scores(agg, x["words"], ctx, x["word_mask"], x["img_global"], x["txt_global"])

    for a, c in zip(_grads(fast, b, params), _grads(ref, b, params)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, c, atol=2e-5, rtol=1e-4)


def test_key_padding_mask_is_the_edge_mask_on_valid_rows_and_never_empty():
    valid = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    keys = key_padding_mask(valid).expand(3, 5, 5)
    full = build_edge_mask(valid, None, False)
    rows = valid.unsqueeze(-1).expand(3, 5, 5)
    assert torch.equal(keys[rows], full[rows])
    assert keys.any(-1).all()  # no query row without a key, even for a pair with no valid node


def test_report_without_words_is_finite_and_equal_to_the_reference():
    torch.manual_seed(0)
    b = batch()
    b["word_mask"][2] = False
    for global_node in (True, False):
        agg = build_aggregator("srm+irm", D, d_z=8, heads=2, global_node=global_node)
        fast = pairwise_local_scores(**b, aggregator=agg, chunk_size=3)
        ctx = reference_context(b["words"], b["regions"], 0.1)
        ref = reference_relation_scores(agg, b["words"], ctx, b["word_mask"], b["img_global"], b["txt_global"])
        assert torch.isfinite(fast).all()
        torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["softmax", "gloria"])
def test_non_finite_padding_never_leaks(mode):
    torch.manual_seed(0)
    b = batch()
    agg = build_aggregator("srm+irm", D, d_z=8, heads=2)
    ref = pairwise_local_scores(**b, aggregator=agg, chunk_size=2, mode=mode)
    bad = b["words"].clone()
    pad = ~b["word_mask"]
    bad[pad] = float("nan")
    bad[1, 6] = float("inf")
    words = bad.requires_grad_(True)
    out = pairwise_local_scores(**{**b, "words": words}, aggregator=agg, chunk_size=2, mode=mode)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert torch.isfinite(words.grad).all()

