"""Losses: InfoNCE properties, the global and local contrastive terms, MGCA token weights, Sinkhorn, prototypes, top-k.

Each method's total loss is pinned against its paper's formula in tests/test_method_losses.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reclf.align.losses import (
    PrototypeLoss,
    Temperature,
    clip_percentile_weights,
    global_contrastive_loss,
    info_nce,
    local_contrastive_loss,
    mgca_token_loss,
    sinkhorn,
    topk_candidates,
)


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("batch", [8, 32])
def test_info_nce_at_initialisation_is_log_batch(batch):
    img, txt = unit(batch, 512, seed=1), unit(batch, 512, seed=2)
    loss = info_nce(img @ txt.t())  # tau = 1: random features give ~uniform softmax
    assert abs(float(loss) - math.log(batch)) < 0.05
    loss = info_nce(img @ txt.t() / 0.1)  # sharper but still close: cos ~ N(0, 1/512)
    assert abs(float(loss) - math.log(batch)) < 0.3


def test_symmetric_info_nce_is_symmetric_under_transpose():
    logits = torch.randn(6, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(info_nce(logits), info_nce(logits.t()))
    assert not torch.allclose(info_nce(logits, symmetric=False), info_nce(logits.t(), symmetric=False))
    target = torch.arange(6)
    both = F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)
    torch.testing.assert_close(info_nce(logits, sum_directions=True), both)
    torch.testing.assert_close(info_nce(logits), both / 2)


def test_info_nce_with_extra_columns_and_targets():
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([6, 0, 3, 2])
    ref_i2t = F.cross_entropy(logits, targets)
    ref_t2i = F.cross_entropy(logits[:, targets].t(), torch.arange(4))
    torch.testing.assert_close(info_nce(logits, targets), (ref_i2t + ref_t2i) / 2)
    with pytest.raises(ValueError, match="targets"):
        info_nce(torch.randn(5, 3))


def test_global_contrastive_loss_weighting_and_summing():
    img, txt = unit(5, 16, seed=3), unit(5, 16, seed=4)
    logits = img @ txt.t() / 0.1
    t = torch.arange(5)
    i2t, t2i = F.cross_entropy(logits, t), F.cross_entropy(logits.t(), t)
    torch.testing.assert_close(global_contrastive_loss(img, txt, 0.1, i2t_weight=0.75), 0.75 * i2t + 0.25 * t2i)
    torch.testing.assert_close(global_contrastive_loss(img, txt, 0.1, i2t_weight=1.0), i2t)
    torch.testing.assert_close(global_contrastive_loss(img, txt, 0.1, sum_directions=True), i2t + t2i)
    # inputs are re-normalised: any scale of the embeddings gives the same cosine logits
    torch.testing.assert_close(global_contrastive_loss(3 * img, txt, 0.1), (i2t + t2i) / 2)


def test_temperature_fixed_learnable_and_clamped():
    t = Temperature(0.07)
    assert abs(float(t.tau) - 0.07) < 1e-6 and isinstance(t.log_scale, torch.nn.Parameter)
    x = torch.ones(3, requires_grad=True)
    (t(x)).sum().backward()
    assert t.log_scale.grad is not None and t.log_scale.grad.abs() > 0
    fixed = Temperature(0.1, learnable=False)
    assert list(fixed.parameters()) == [] and "log_scale" in fixed.state_dict()
    clamped = Temperature(0.07, min_tau=0.05)
    with torch.no_grad():
        clamped.log_scale.fill_(math.log(1000.0))
    assert abs(float(clamped.tau) - 0.05) < 1e-6
    with pytest.raises(ValueError):
        Temperature(0.001)


def test_local_contrastive_loss_sums_directions_at_its_temperature():
    local = torch.randn(4, 4, generator=torch.Generator().manual_seed(7))
    t = torch.arange(4)
    ref = F.cross_entropy(local * 10, t) + F.cross_entropy(local.t() * 10, t)
    torch.testing.assert_close(local_contrastive_loss(local, 0.1, sum_directions=True), ref)
    torch.testing.assert_close(local_contrastive_loss(local, 0.1), ref / 2)


def test_clip_percentile_weights_match_torch_quantile_loop():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(5, 9, generator=g)
    w[1, 3] = 0.0  # a zero weight stays zero (MGCA clips non-zero values only)
    mask = torch.ones(5, 9, dtype=torch.bool)
    mask[2, 4:] = False
    mask[3, 1:] = False
    out = clip_percentile_weights(w, mask)
    for b in range(5):
        usable = mask[b] & (w[b] > 0)
        vals = w[b][usable]
        lo, hi = torch.quantile(vals, 0.1), torch.quantile(vals, 0.9)
        ref = torch.zeros(9)
        ref[usable] = vals.clip(lo, hi)
        ref = ref / ref.sum()
        torch.testing.assert_close(out[b], ref, atol=1e-6, rtol=0)
    empty = clip_percentile_weights(torch.zeros(1, 4), torch.tensor([[True, True, False, False]]))
    torch.testing.assert_close(empty, torch.tensor([[0.5, 0.5, 0.0, 0.0]]))


def mgca_reference(words, patches, ww, tau=0.1):
    """MGCA's token loss as written in mgca_module.py (no padding, uniform CNN patch weights)."""
    b, n_w, _ = words.shape
    n_p = patches.shape[1]
    ctx = F.normalize(torch.softmax(words @ patches.transpose(1, 2) / tau, -1) @ patches, dim=-1)
    sim = words @ ctx.transpose(1, 2) / tau
    t = torch.arange(n_w).repeat(b)
    l1 = (F.cross_entropy(sim.reshape(b * n_w, n_w), t, reduction="none") * ww.reshape(-1)).sum() / b
    l2 = (F.cross_entropy(sim.transpose(1, 2).reshape(b * n_w, n_w), t, reduction="none") * ww.reshape(-1)).sum() / b
    pctx = F.normalize(torch.softmax(patches @ words.transpose(1, 2) / tau, -1) @ words, dim=-1)
    psim = patches @ pctx.transpose(1, 2) / tau
    pw = torch.full((b * n_p,), 1.0 / n_p)
    tp = torch.arange(n_p).repeat(b)
    p1 = (F.cross_entropy(psim.reshape(b * n_p, n_p), tp, reduction="none") * pw).sum() / b
    p2 = (F.cross_entropy(psim.transpose(1, 2).reshape(b * n_p, n_p), tp, reduction="none") * pw).sum() / b
    return (l1 + l2) / 2 + (p1 + p2) / 2


def test_mgca_token_loss_matches_reference_and_ignores_padding():
    words, patches = unit(3, 6, 16, seed=10), unit(3, 9, 16, seed=11)
    raw = torch.rand(3, 6, generator=torch.Generator().manual_seed(12)) + 0.1
    mask = torch.ones(3, 6, dtype=torch.bool)
    out = mgca_token_loss(words, mask, patches, raw)
    ww = clip_percentile_weights(raw, mask)
    torch.testing.assert_close(out["loss"], mgca_reference(words, patches, ww), atol=1e-5, rtol=1e-5)
    # padding words (garbage, any attention weight) change nothing
    pad_words = torch.cat([words, 20 * torch.randn(3, 3, 16)], dim=1)
    pad_mask = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], dim=1)
    pad_raw = torch.cat([raw, torch.rand(3, 3)], dim=1)
    padded = mgca_token_loss(pad_words, pad_mask, patches, pad_raw)
    torch.testing.assert_close(padded["loss"], out["loss"], atol=1e-5, rtol=1e-5)
    vit = mgca_token_loss(words, mask, patches, raw, patch_weights=torch.rand(3, 9) + 0.1)
    assert torch.isfinite(vit["loss"]) and not torch.allclose(vit["patch"], out["patch"])


def test_sinkhorn_marginals():
    scores = unit(64, 16, seed=13) @ unit(10, 16, seed=14).t()
    codes = sinkhorn(scores, n_iters=3)
    torch.testing.assert_close(codes.sum(1), torch.ones(64))
    converged = sinkhorn(scores, n_iters=200)
    torch.testing.assert_close(converged.sum(1), torch.ones(64))
    torch.testing.assert_close(converged.sum(0), torch.full((10,), 64 / 10), atol=1e-3, rtol=0)
    # three iterations already balance far better than the raw softmax
    raw = torch.softmax(scores / 0.05, dim=1).sum(0)
    assert (codes.sum(0) - 6.4).abs().max() < (raw - 6.4).abs().max()


def test_prototype_loss_gradients_and_freeze():
    torch.manual_seed(0)
    proto = PrototypeLoss(16, n_prototypes=20)
    img = unit(8, 16, seed=15).requires_grad_(True)
    txt = unit(8, 16, seed=16).requires_grad_(True)
    loss = proto(img, txt)
    assert torch.isfinite(loss)
    loss.backward()
    assert proto.prototypes.weight.grad.abs().sum() > 0 and img.grad.abs().sum() > 0
    proto.zero_grad()
    img.grad = None
    proto.frozen = True
    proto(img, txt).backward()
    assert proto.prototypes.weight.grad is None and img.grad.abs().sum() > 0
    proto.renormalize_()
    torch.testing.assert_close(proto.prototypes.weight.norm(dim=1), torch.ones(20))


def test_topk_candidates_and_candidate_loss():
    sim = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.2, 0.3, 0.9, 0.1], [0.7, 0.6, 0.5, 0.4], [0.0, 0.0, 0.0, 1.0]])
    pairs = topk_candidates(sim, 2)
    assert pairs[:, 0].tolist() == [0, 1, 2, 3]
    assert pairs[0].tolist() == [0, 1, 3] and pairs[1].tolist() == [1, 2, 0] and pairs[2].tolist() == [2, 0, 1]
    assert topk_candidates(sim, 10).shape == (4, 4)
    full = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    # with every report a candidate, the candidate loss equals the all-pairs loss
    all_pairs = topk_candidates(sim, 3)
    sub = full.gather(1, all_pairs)
    torch.testing.assert_close(local_contrastive_loss(sub, 0.1, all_pairs), local_contrastive_loss(full, 0.1))
    # with fewer candidates, unscored pairs are left out of both directions
    sub = full.gather(1, pairs)
    loss = local_contrastive_loss(sub, 0.1, pairs)
    masked = torch.full((4, 4), float("-inf")).scatter(1, pairs, sub.detach()) / 0.1
    t = torch.arange(4)
    ref = (F.cross_entropy(masked, t) + F.cross_entropy(masked.t(), t)) / 2
    torch.testing.assert_close(loss.detach(), ref)
    loss.backward()
    assert torch.isfinite(full.grad).all()


def test_learnable_temperatures_get_gradients_through_both_terms():
    img, txt = unit(4, 8, seed=17), unit(4, 8, seed=18)
    s = torch.randn(4, 4, generator=torch.Generator().manual_seed(19))
    tau_g, tau_l = Temperature(0.07), Temperature(0.1)
    g, loc = global_contrastive_loss(img, txt, tau_g), local_contrastive_loss(s, tau_l)
    torch.testing.assert_close(loc, info_nce(s / 0.1), atol=1e-5, rtol=1e-5)
    (g + 0.5 * loc).backward()
    assert tau_g.log_scale.grad.abs() > 0 and tau_l.log_scale.grad.abs() > 0


def test_end_to_end_every_learnable_part_gets_a_gradient():
    """Projections -> all-pairs SRM+IRM scores -> RECLF loss + prototypes, learnable temperatures."""
    from reclf.align.aggregators import build_aggregator
    from reclf.align.matching import pairwise_local_scores
    from reclf.models.projection import GlobalProjection, LocalProjection

    torch.manual_seed(0)
    b, n_words, width, d = 4, 6, 12, 16
    parts = {
        "img_g": GlobalProjection(width, d, "mlp"),
        "txt_g": GlobalProjection(width, d, "linear"),
        "img_l": LocalProjection(width, d, "mlp"),
        "txt_l": LocalProjection(width, d, "linear"),
        "agg": build_aggregator("srm+irm", d, d_z=8, heads=2, sentence_edges=True),
        "proto": PrototypeLoss(d, n_prototypes=10),
        "tau_g": Temperature(0.07),
        "tau_l": Temperature(0.1),
    }
    mask = torch.ones(b, n_words, dtype=torch.bool)
    mask[1, 4:] = False
    sent = (torch.arange(n_words) // 3).repeat(b, 1).masked_fill(~mask, -1)
    img_g = parts["img_g"](torch.randn(b, width))
    txt_g = parts["txt_g"](torch.randn(b, width))
    regions = parts["img_l"](torch.randn(b, width, 3, 3))
    words = parts["txt_l"](torch.randn(b, n_words, width), mask)
    s = pairwise_local_scores(words, mask, sent, regions, img_g, txt_g, parts["agg"], chunk_size=3)
    loss = global_contrastive_loss(img_g, txt_g, parts["tau_g"]) + local_contrastive_loss(s, parts["tau_l"])
    (loss + parts["proto"](img_g, txt_g)).backward()
    for name, module in parts.items():
        for pname, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname}"
