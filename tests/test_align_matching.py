"""Local matcher: vectorised all-pairs attention vs a naive per-pair loop, chunking, masking, permutation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reclf.align.aggregators import AGGREGATORS, build_aggregator
from reclf.align.matching import (
    ATTENTION_MODES,
    DEFAULT_MATCH_SCALE,
    GLORIA_ATTN_TEMPERATURE,
    attend,
    attend_paired,
    normalized_entropy,
    pairwise_local_outputs,
    pairwise_local_scores,
)
from reclf.methods.params import PRESETS, method_params

D = 16


def make_batch(n_img: int = 4, n_txt: int = 5, n_words: int = 7, n_reg: int = 9, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, n_words + 1, (n_txt,), generator=g)
    lengths[0] = n_words  # one full report
    mask = torch.arange(n_words)[None, :] < lengths[:, None]
    sent = torch.where(mask, torch.arange(n_words)[None, :] // 3, torch.full((n_txt, n_words), -1))
    return {
        "words": F.normalize(torch.randn(n_txt, n_words, D, generator=g), dim=-1),
        "word_mask": mask,
        "sentence_ids": sent,
        "regions": F.normalize(torch.randn(n_img, n_reg, D, generator=g), dim=-1),
        "img_global": F.normalize(torch.randn(n_img, D, generator=g), dim=-1),
        "txt_global": F.normalize(torch.randn(n_txt, D, generator=g), dim=-1),
    }


def naive_attend(words_t, regions_i, temperature, mode, scale=1.0):
    """One pair, valid words only, written as directly as possible (GLoRIA: attention_fn)."""
    sim = words_t @ regions_i.t()  # [W, R]
    if mode == "softmax":
        attn = torch.softmax(sim / temperature, dim=1)
    else:
        attn = torch.softmax(torch.softmax(scale * sim, dim=0) / temperature, dim=1)
    return F.normalize(attn @ regions_i, dim=-1), attn


@pytest.mark.parametrize(
    "mode,temperature,scale",
    [("softmax", 0.1, 1.0), ("gloria", GLORIA_ATTN_TEMPERATURE, 1.0), ("gloria", GLORIA_ATTN_TEMPERATURE, 7.0)],
)
def test_attend_matches_naive_loop(mode, temperature, scale):
    b = make_batch()
    ctx, attn = attend(b["words"], b["regions"], temperature, mode, word_mask=b["word_mask"], scale=scale)
    n_img, n_txt = b["regions"].shape[0], b["words"].shape[0]
    assert ctx.shape == (n_img, n_txt, 7, D) and attn.shape == (n_img, n_txt, 7, 9)
    for i in range(n_img):
        for t in range(n_txt):
            m = b["word_mask"][t]
            c_ref, a_ref = naive_attend(b["words"][t][m], b["regions"][i], temperature, mode, scale)
            torch.testing.assert_close(ctx[i, t][m], c_ref, atol=1e-5, rtol=0)
            torch.testing.assert_close(attn[i, t][m], a_ref, atol=1e-5, rtol=0)


def gloria_loop_scores(words, mask, regions, gamma=5.0, scale=1.0):
    """GLoRIA's own structure: a Python loop over captions, each against all images (lse pooling)."""
    cols = []
    for t in range(words.shape[0]):
        w = words[t][mask[t]]
        per_img = []
        for i in range(regions.shape[0]):
            c, _ = naive_attend(w, regions[i], GLORIA_ATTN_TEMPERATURE, "gloria", scale)
            cos = F.cosine_similarity(w, c, dim=-1)
            per_img.append(torch.log(torch.exp(gamma * cos).sum()))
        cols.append(torch.stack(per_img))
    return torch.stack(cols, dim=1)


@pytest.mark.parametrize("scale", [1.0, DEFAULT_MATCH_SCALE])
def test_pairwise_lse_equals_gloria_loop(scale):
    b = make_batch()
    agg = build_aggregator("lse", D)
    s = pairwise_local_scores(
        **b, aggregator=agg, temperature=GLORIA_ATTN_TEMPERATURE, mode="gloria", chunk_size=3, scale=scale
    )
    ref = gloria_loop_scores(b["words"], b["word_mask"], b["regions"], scale=scale)
    torch.testing.assert_close(s, ref, atol=1e-5, rtol=0)


def _one_word_per_region(n_regions: int = 16, dim: int = 64, seed: int = 0):
    """Unit-norm, mutually orthogonal regions and one word equal to each region (a permutation of them)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    regions = q[:n_regions]  # orthonormal rows
    own = torch.randperm(n_regions, generator=g)
    return regions[own].unsqueeze(0), regions.unsqueeze(0), own


@pytest.mark.parametrize("preset", [n for n, v in PRESETS.items() if v.get("local_weight", 0) > 0])
def test_word_equal_to_a_region_attends_mostly_to_it(preset):
    """For every matcher mode as the presets configure it (scale at its initial value): a word equal to
    one region's direction puts most of its attention (> 1/2, 16 regions) on that region. GLoRIA's rule on
    bare cosines (scale 1, the bug of issue 10) fails this: its peak is ~0.09, barely above 1/16."""
    p = method_params(preset)
    words, regions, own = _one_word_per_region()
    scale = p.match_scale if p.match_mode == "gloria" else 1.0
    _, attn = attend(words, regions, p.match_temperature, p.match_mode, scale=scale)
    on_own = attn[0, 0][torch.arange(len(own)), own]
    assert (attn[0, 0].argmax(-1) == own).all()
    assert on_own.min() > 0.5, f"{preset} ({p.match_mode}): attention on the matching region {on_own.min():.3f}"
    _, paired = attend_paired(words, regions, p.match_temperature, p.match_mode, scale=scale)
    torch.testing.assert_close(paired[0], attn[0, 0])


def test_every_mode_is_covered_and_bare_cosines_are_flat():
    modes = {method_params(n).match_mode for n, v in PRESETS.items() if v.get("local_weight", 0) > 0}
    assert modes == set(ATTENTION_MODES)
    words, regions, own = _one_word_per_region()
    _, flat = attend(words, regions, GLORIA_ATTN_TEMPERATURE, "gloria", scale=1.0)
    assert flat[0, 0][torch.arange(len(own)), own].max() < 0.15  # the measured defect the scale fixes
    assert normalized_entropy(flat[0, 0]).min() > 0.95


@pytest.mark.parametrize("mode", ["softmax", "gloria"])
def test_attend_paired_is_the_diagonal(mode):
    b = make_batch(n_img=4, n_txt=4)
    temp = 0.1 if mode == "softmax" else GLORIA_ATTN_TEMPERATURE
    ctx, attn = attend(b["words"], b["regions"], temp, mode, word_mask=b["word_mask"])
    pc, pa = attend_paired(b["words"], b["regions"], temp, mode, word_mask=b["word_mask"])
    idx = torch.arange(4)
    m = b["word_mask"]
    torch.testing.assert_close(pc[m], ctx[idx, idx][m], atol=1e-6, rtol=0)
    torch.testing.assert_close(pa[m], attn[idx, idx][m], atol=1e-6, rtol=0)


def test_attend_paired_key_mask_for_mirror_direction():
    b = make_batch(n_img=5, n_txt=5)
    ctx, attn = attend_paired(b["regions"], b["words"], 0.1, region_mask=b["word_mask"])
    assert attn.shape == (5, 9, 7)
    assert torch.all(attn.masked_select(~b["word_mask"][:, None, :].expand_as(attn)) == 0)
    torch.testing.assert_close(attn.sum(-1), torch.ones(5, 9))


@pytest.mark.parametrize("name", ["lse", "srm+irm"])
@pytest.mark.parametrize("mode", ["softmax", "gloria"])
def test_chunk_size_does_not_change_results(name, mode):
    torch.manual_seed(0)
    b = make_batch(n_img=5)
    agg = build_aggregator(name, D, d_z=8, heads=2)
    ref = pairwise_local_scores(**b, aggregator=agg, temperature=0.25, mode=mode, chunk_size=100)
    for chunk in (1, 2, 3):
        s = pairwise_local_scores(**b, aggregator=agg, temperature=0.25, mode=mode, chunk_size=chunk)
        torch.testing.assert_close(s, ref, atol=1e-6, rtol=0)


def test_checkpointing_gives_same_values_and_gradients():
    torch.manual_seed(0)
    b = make_batch()
    agg = build_aggregator("srm+irm", D, d_z=8, heads=2)
    grads = []
    for ckpt in (False, True):
        regions = b["regions"].clone().requires_grad_(True)
        args = {**b, "regions": regions}
        s = pairwise_local_scores(**args, aggregator=agg, chunk_size=2, checkpoint=ckpt)
        agg.zero_grad()
        (s * torch.arange(s.numel()).reshape(s.shape)).sum().backward()
        grads.append((s.detach(), regions.grad.clone(), agg.matchings.word.weight.grad.clone()))
    for a, c in zip(grads[0], grads[1]):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", AGGREGATORS)
@pytest.mark.parametrize("mode", ["softmax", "gloria"])
def test_masked_garbage_words_never_change_scores(name, mode):
    torch.manual_seed(0)
    b = make_batch()
    agg = build_aggregator(name, D, d_z=8, heads=2, sentence_edges=(name == "srm+irm"))
    agg.eval()
    temp = 0.1 if mode == "softmax" else GLORIA_ATTN_TEMPERATURE
    ref = pairwise_local_scores(**b, aggregator=agg, temperature=temp, mode=mode, chunk_size=2)
    n_txt, extra = b["words"].shape[0], 4
    garbage = 50 * torch.randn(n_txt, extra, D)
    padded = {
        **b,
        "words": torch.cat([b["words"], garbage], dim=1),
        "word_mask": torch.cat([b["word_mask"], torch.zeros(n_txt, extra, dtype=torch.bool)], dim=1),
        "sentence_ids": torch.cat([b["sentence_ids"], torch.randint(0, 3, (n_txt, extra))], dim=1),
    }
    # garbage also inside the existing padding of the shorter reports
    inner = ~b["word_mask"]
    padded["words"][:, :7][inner] = 30 * torch.randn(int(inner.sum()), D)
    out = pairwise_local_scores(**padded, aggregator=agg, temperature=temp, mode=mode, chunk_size=3)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", AGGREGATORS)
def test_permuting_the_batch_permutes_scores(name):
    torch.manual_seed(0)
    b = make_batch()
    agg = build_aggregator(name, D, d_z=8, heads=2)
    ref = pairwise_local_scores(**b, aggregator=agg, chunk_size=3)
    pi, pt = torch.randperm(4), torch.randperm(5)
    permuted = {
        "words": b["words"][pt],
        "word_mask": b["word_mask"][pt],
        "sentence_ids": b["sentence_ids"][pt],
        "regions": b["regions"][pi],
        "img_global": b["img_global"][pi],
        "txt_global": b["txt_global"][pt],
    }
    out = pairwise_local_scores(**permuted, aggregator=agg, chunk_size=2)
    torch.testing.assert_close(out, ref[pi][:, pt], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", AGGREGATORS)
def test_report_with_no_valid_word_is_finite(name):
    torch.manual_seed(0)
    b = make_batch()
    b["word_mask"][2] = False
    b["sentence_ids"][2] = -1
    words = b["words"].clone().requires_grad_(True)
    agg = build_aggregator(name, D, d_z=8, heads=2, sentence_edges=True)
    for mode in ("softmax", "gloria"):
        s = pairwise_local_scores(**{**b, "words": words}, aggregator=agg, mode=mode, temperature=0.25)
        assert torch.isfinite(s).all()
        s.sum().backward()
        assert torch.isfinite(words.grad).all()
        words.grad = None


def test_pairs_option_scores_only_the_candidates():
    torch.manual_seed(0)
    b = make_batch(n_img=5, n_txt=5)
    agg = build_aggregator("srm+irm", D, d_z=8, heads=2)
    full = pairwise_local_scores(**b, aggregator=agg, chunk_size=2)
    pairs = torch.tensor([[0, 3, 1], [1, 0, 4], [2, 2, 3], [3, 4, 0], [4, 1, 2]])
    sub = pairwise_local_scores(**b, aggregator=agg, chunk_size=2, pairs=pairs)
    assert sub.shape == (5, 3)
    torch.testing.assert_close(sub, full.gather(1, pairs), atol=1e-5, rtol=1e-5)


def test_outputs_keep_extras_per_pair():
    torch.manual_seed(0)
    b = make_batch()
    agg = build_aggregator("srm+irm", D, d_z=8, heads=2)
    out = pairwise_local_outputs(**b, aggregator=agg, chunk_size=3)
    assert out.score.shape == (4, 5) and out.global_node
    assert out.node_weights.shape == (4, 5, 8) and out.relations.shape == (4, 5, 8, 8)
    torch.testing.assert_close(out.score, pairwise_local_scores(**b, aggregator=agg, chunk_size=4))


def test_bad_shapes_are_clear_errors():
    b = make_batch()
    agg = build_aggregator("mean", D)
    with pytest.raises(ValueError, match="word_mask"):
        pairwise_local_scores(**{**b, "word_mask": b["word_mask"][:, :3]}, aggregator=agg)
    with pytest.raises(ValueError, match="mode"):
        attend(b["words"], b["regions"], 0.1, "bogus")
    with pytest.raises(ValueError, match="width"):
        attend(b["words"], b["regions"][..., :8], 0.1)
