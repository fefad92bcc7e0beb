"""Aggregators: pooling formulas, SRM sentence edges, IRM weights, gradients, factory errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reclf.align.aggregators import (
    AGGREGATORS,
    AggregatorConfig,
    RelationAggregator,
    SRMConfig,
    build_aggregator,
    build_edge_mask,
)
from reclf.align.matching import attend

D = 16


def inputs(n_img=3, n_txt=4, n_words=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    words = F.normalize(torch.randn(n_txt, n_words, D, generator=g), dim=-1)
    regions = F.normalize(torch.randn(n_img, 6, D, generator=g), dim=-1)
    mask = torch.ones(n_txt, n_words, dtype=torch.bool)
    mask[1, 5:] = False
    mask[3, 2:] = False
    sent = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2]).repeat(n_txt, 1).masked_fill(~mask, -1)
    ctx, _ = attend(words, regions, 0.1)
    img_g = F.normalize(torch.randn(n_img, D, generator=g), dim=-1)
    txt_g = F.normalize(torch.randn(n_txt, D, generator=g), dim=-1)
    return words, ctx, mask, sent, img_g, txt_g


def test_pooling_formulas():
    words, ctx, mask, sent, img_g, txt_g = inputs()
    cos = F.cosine_similarity(words.unsqueeze(0).expand_as(ctx), ctx, dim=-1)
    for name in ("mean", "max", "lse"):
        out = build_aggregator(name, D)(words, ctx, mask, sent, img_g, txt_g)
        for i in range(3):
            for t in range(4):
                c = cos[i, t][mask[t]]
                ref = {"mean": c.mean(), "max": c.max(), "lse": torch.logsumexp(5.0 * c, 0)}[name]
                torch.testing.assert_close(out.score[i, t], ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.node_weights.sum(-1), torch.ones(3, 4), atol=1e-5, rtol=0)


def test_lse_gamma_option():
    words, ctx, mask, sent, img_g, txt_g = inputs()
    a = build_aggregator("lse", D, gamma=1.0)(words, ctx, mask, sent, img_g, txt_g).score
    b = build_aggregator("lse", D)(words, ctx, mask, sent, img_g, txt_g).score
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("name", ["irm", "srm+irm"])
def test_irm_weights_sum_to_one_over_valid_nodes(name):
    torch.manual_seed(0)
    words, ctx, mask, sent, img_g, txt_g = inputs()
    out = build_aggregator(name, D, d_z=8, heads=2)(words, ctx, mask, sent, img_g, txt_g)
    assert out.global_node and out.node_weights.shape == (3, 4, 9)
    torch.testing.assert_close(out.node_weights.sum(-1), torch.ones(3, 4), atol=1e-5, rtol=0)
    node_valid = torch.cat([torch.ones(4, 1, dtype=torch.bool), mask], dim=1)
    assert torch.all(out.node_weights[:, ~node_valid] == 0)
    assert torch.all(out.node_weights[:, node_valid] > 0)


def test_sentence_edges_block_cross_sentence_attention():
    torch.manual_seed(0)
    words, ctx, mask, sent, img_g, txt_g = inputs()
    agg = build_aggregator("srm+irm", D, d_z=8, heads=2, sentence_edges=True)
    rel = agg(words, ctx, mask, sent, img_g, txt_g).relations  # [I, T, 9, 9]
    node_sent = torch.cat([torch.full((4, 1), -2), sent], dim=1)
    node_valid = torch.cat([torch.ones(4, 1, dtype=torch.bool), mask], dim=1)
    same = node_sent[:, :, None] == node_sent[:, None, :]
    word_pair = torch.ones(9, 9, dtype=torch.bool)
    word_pair[0, :] = word_pair[:, 0] = False
    cross = word_pair & ~same  # word-word edges across sentences (valid or not)
    assert torch.all(rel[:, cross] == 0)
    within = word_pair & same & node_valid[:, :, None] & node_valid[:, None, :]
    assert torch.all(rel[:, within] > 0)
    # the global node stays connected to every valid word, both ways
    g_edges = node_valid.clone()
    assert torch.all(rel[:, :, 0, :][:, g_edges] > 0) and torch.all(rel[:, :, :, 0][:, g_edges] > 0)
    torch.testing.assert_close(rel.sum(-1)[:, node_valid], torch.ones(3, int(node_valid.sum())), atol=1e-5, rtol=0)
    # without the option, cross-sentence edges carry weight
    dense = build_aggregator("srm+irm", D, d_z=8, heads=2)
    dense.load_state_dict(agg.state_dict())
    rel2 = dense(words, ctx, mask, sent, img_g, txt_g).relations
    valid_cross = cross & node_valid[:, :, None] & node_valid[:, None, :]
    assert torch.all(rel2[:, valid_cross] > 0)


def test_edge_mask_diagonal_always_allowed():
    valid = torch.tensor([[True, True, False]])
    edges = build_edge_mask(valid, None, True)
    assert edges[0].diagonal().all() and not edges[0, 0, 2] and not edges[0, 2, 0]


@pytest.mark.parametrize("name", ["irm", "srm+lse", "srm+irm"])
def test_every_learnable_part_gets_a_gradient(name):
    torch.manual_seed(0)
    words, ctx, mask, sent, img_g, txt_g = inputs()
    agg = build_aggregator(name, D, d_z=8, heads=2, layers=2)
    out = agg(words, ctx, mask, sent, img_g, txt_g)
    (out.score * torch.randn_like(out.score)).sum().backward()
    for pname, p in agg.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_per_image_report_sets_equal_shared():
    """Words given per image ([I, T, W, d], as for top-k candidates) give the same scores as shared words."""
    torch.manual_seed(0)
    words, ctx, mask, sent, img_g, txt_g = inputs()
    agg = build_aggregator("srm+irm", D, d_z=8, heads=2, sentence_edges=True)
    shared = agg(words, ctx, mask, sent, img_g, txt_g).score
    per = agg(
        words.expand(3, -1, -1, -1), ctx, mask.expand(3, -1, -1), sent.expand(3, -1, -1), img_g, txt_g.expand(3, -1, -1)
    ).score
    torch.testing.assert_close(per, shared)


def test_global_node_can_be_disabled():
    torch.manual_seed(0)
    words, ctx, mask, sent, img_g, txt_g = inputs()
    out = build_aggregator("srm+irm", D, d_z=8, heads=2, global_node=False)(words, ctx, mask, sent, img_g, txt_g)
    assert not out.global_node and out.node_weights.shape == (3, 4, 8)


def test_factory_names_and_errors():
    for name in AGGREGATORS:
        assert build_aggregator(name, D, d_z=8, heads=2).name == name
    with pytest.raises(ValueError, match="unknown aggregator"):
        build_aggregator("attention", D)
    with pytest.raises(ValueError, match="unknown option 'hedas'"):
        build_aggregator("srm+irm", D, hedas=2)
    with pytest.raises(ValueError, match="divisible"):
        build_aggregator("srm+irm", D, d_z=10, heads=4)
    agg = build_aggregator("srm+irm", D, srm={"layers": 2, "heads": 2}, d_z=8)
    assert isinstance(agg, RelationAggregator) and len(agg.srm.layers) == 2
    cfg = AggregatorConfig(name="srm+lse", d_z=8, srm=SRMConfig(heads=2))
    assert RelationAggregator(D, cfg).node_readout is not None


@pytest.mark.parametrize("sentence_edges", [False, True])
@pytest.mark.parametrize("name", ["srm+irm", "srm+lse"])
def test_fused_attention_path_equals_the_explicit_one(name, sentence_edges):
    """Training skips the relation matrices (fused kernel); scores and gradients must not change."""
    torch.manual_seed(0)
    words, ctx, mask, sent, img_g, txt_g = inputs()
    agg = build_aggregator(name, D, d_z=8, heads=2, layers=2, sentence_edges=sentence_edges)
    ctx = ctx.clone().requires_grad_()
    full = agg(words, ctx, mask, sent, img_g, txt_g, extras=True)
    (g_full,) = torch.autograd.grad(full.score.sum(), ctx)
    fast = agg(words, ctx, mask, sent, img_g, txt_g, extras=False)
    (g_fast,) = torch.autograd.grad(fast.score.sum(), ctx)
    assert full.relations is not None and fast.relations is None
    torch.testing.assert_close(fast.score, full.score, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_fast, g_full, atol=1e-5, rtol=1e-4)
