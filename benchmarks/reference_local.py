"""The local-loss formulas as first written (before issue 14), kept as the reference that the fast paths
are tested against (tests/test_align_perf.py) and timed against (``bench_local.py --sections loss``).

Explicit word -> region softmax stored in full (``[I, T, W, R]``), the ``[P, N, N]`` SRM edge mask with
permuted q/k/v copies, and the padding mask applied to the large ``[I, T, W, d]`` product.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from reclf.align.aggregators import RelationAggregator, build_edge_mask
from reclf.align.masking import masked_mean, masked_softmax


def reference_context(words, regions, temperature):
    """Explicit softmax attention, ``[I, T, W, R]`` stored: ``words[T, W, d]``, ``regions[I, R, d]``."""
    attn = torch.softmax(torch.einsum("twd,ird->itwr", words, regions) / temperature, dim=-1)
    return F.normalize(torch.einsum("itwr,ird->itwd", attn, regions), dim=-1, eps=1e-8)


def reference_relation_scores(agg: RelationAggregator, words, context, mask, img_g, txt_g):
    """``srm+irm`` / ``irm`` / ``srm+lse`` as first written: full edge mask, permuted q/k/v, explicit softmax."""
    n_img, n_txt, n_words, dim = context.shape
    mv = agg.matchings
    prod = (words.unsqueeze(0) * context) * mv.scale
    prod = prod.masked_fill(~mask.unsqueeze(0).unsqueeze(-1), 0.0)
    z = mv.word(prod).reshape(n_img * n_txt, n_words, mv.d_z)
    valid = mask.unsqueeze(0).expand(n_img, n_txt, n_words).reshape(n_img * n_txt, n_words)
    if mv.glob is not None:
        z0 = mv.glob(img_g[:, None, :] * txt_g[None] * mv.scale).reshape(n_img * n_txt, 1, mv.d_z)
        z = torch.cat([z0, z], dim=1)
        valid = torch.cat([valid.new_ones(n_img * n_txt, 1), valid], dim=1)
    if agg.srm is not None:
        edges = build_edge_mask(valid, None, agg.global_node)
        for layer in agg.srm.layers:
            p, n, d = z.shape
            q, k, v = layer.qkv(z).reshape(p, n, 3, layer.heads, layer.head_dim).permute(2, 0, 3, 1, 4)
            logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(layer.head_dim)
            attn = masked_softmax(logits, edges.unsqueeze(1), dim=-1)
            mixed = torch.matmul(attn, v).transpose(1, 2).reshape(p, n, d)
            z = layer.norm1(z + layer.out(mixed))
            z = layer.norm2(z + layer.ffn(z))
    if agg.irm is not None:
        mean = masked_mean(z, valid, dim=1)
        u = agg.irm.importance(torch.tanh(agg.irm.node(z) + agg.irm.ctx(mean).unsqueeze(1))).squeeze(-1)
        beta = masked_softmax(u, valid, dim=-1)
        score = agg.irm.readout(torch.einsum("pn,pnd->pd", beta, z)).squeeze(-1)
    else:
        r = agg.node_readout(z).squeeze(-1).masked_fill(~valid, torch.finfo(z.dtype).min)
        score = torch.logsumexp(r, dim=-1)
    return score.reshape(n_img, n_txt)


def reference_pairwise_scores(agg: RelationAggregator, x: dict, temperature: float = 0.1, chunk: int = 8):
    """``pairwise_local_scores`` (all pairs, softmax matcher) with the reference formulas, over image chunks."""
    out = []
    for s in range(0, x["regions"].shape[0], chunk):
        sl = slice(s, s + chunk)
        ctx = reference_context(x["words"], x["regions"][sl], temperature)
        out.append(reference_relation_scores(agg, x["words"], ctx, x["word_mask"], x["img_global"][sl],
                                             x["txt_global"]))
    return torch.cat(out)
