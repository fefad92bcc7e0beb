"""Contrastive losses, vectorised (no per-caption Python loops): the terms every method is built from.

Each formula lives here once; ``reclf.methods.VLModel.loss`` composes a method's loss from these terms
with the weights and temperatures of its ``MethodParams`` preset, and ``tests/test_method_losses.py``
pins every method's total against its paper's formula written out by hand.

Convention: a logits matrix has images on the rows and reports on the columns; the positive of image
``i`` is report ``targets[i]`` (default ``i``).

- ``info_nce``: cross-entropy image->report over rows and report->image over columns; ``i2t_weight``
  weighs the two (0.5: the symmetric mean; ConVIRT's ``lambda = 0.75``); ``sum_directions=True`` adds
  them instead (GLoRIA and MGCA both return ``loss0 + loss1``).
- ``Temperature``: fixed or learnable, stored as ``log(1/tau)`` (CLIP's logit scale), clamped.
- ``global_contrastive_loss``: InfoNCE on ``cos(g, h) / tau`` (ConVIRT; GLoRIA's global term; MGCA's
  instance loss; RECLF's global term).
- ``local_contrastive_loss``: InfoNCE on aggregated word-region scores ``s / tau`` over all pairs or over
  the positive + top-k hardest negatives by global similarity (``topk_candidates``): GLoRIA's local
  term (``lse`` scores x ``temp3``) and RECLF's (SRM + IRM scores / ``tau_l``).
- ``mgca_token_loss``: MGCA's token-level intra-pair loss; its prototype loss is
  ``reclf.align.prototypes.PrototypeLoss``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reclf.align.matching import attend_paired
from reclf.align.prototypes import PrototypeLoss, sinkhorn

MGCA_LOCAL_TAU = 0.1
MGCA_CLIP = (0.1, 0.9)


# ---------------------------------------------------------------------------------------------
# generic pieces


def cosine_logits(img: Tensor, txt: Tensor) -> Tensor:
    """``cos(img_i, txt_j)``: ``[N, d] x [M, d] -> [N, M]`` (inputs re-normalised, so any scale is fine)."""
    return F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()


def info_nce(
    logits: Tensor,
    targets: Tensor | None = None,
    symmetric: bool = True,
    i2t_weight: float = 0.5,
    sum_directions: bool = False,
) -> Tensor:
    """InfoNCE on ``logits[N, M]`` (already divided by the temperature).

    Args:
        targets: ``[N]`` index of the positive column of every row; default ``arange(N)`` (needs ``M >= N``).
        symmetric: also the report->image direction, over the columns that are someone's positive
            (``targets`` must then be distinct). ``-inf`` logits (pairs not scored) are allowed.
        i2t_weight: weight of image->report; report->image gets ``1 - i2t_weight``.
        sum_directions: return ``l_i2t + l_t2i`` (GLoRIA, MGCA) instead of the weighted mean.
    """
    if logits.dim() != 2:
        raise ValueError(f"info_nce expects logits [N, M], got {tuple(logits.shape)}")
    n, m = logits.shape
    if targets is None:
        if m < n:
            raise ValueError(f"info_nce: {n} rows but only {m} columns; pass targets explicitly")
        targets = torch.arange(n, device=logits.device)
    l_i2t = F.cross_entropy(logits, targets)
    if not symmetric:
        return l_i2t
    l_t2i = F.cross_entropy(logits[:, targets].t(), torch.arange(n, device=logits.device))
    if sum_directions:
        return l_i2t + l_t2i
    return i2t_weight * l_i2t + (1.0 - i2t_weight) * l_t2i


class Temperature(nn.Module):
    """A softmax temperature, fixed or learnable, stored as ``log(1/tau)`` and clamped to ``[min_tau, max_tau]``.

    ``forward(logits)`` returns ``logits / tau``; ``tau`` and ``scale`` (``1/tau``) are properties.
    """

    def __init__(self, init: float = 0.07, learnable: bool = True, min_tau: float = 0.01, max_tau: float = 10.0):
        super().__init__()
        if not 0 < min_tau <= init <= max_tau:
            raise ValueError(f"Temperature: need 0 < min_tau <= init <= max_tau, got {min_tau}, {init}, {max_tau}")
        value = torch.tensor(math.log(1.0 / init))
        self.learnable = learnable
        if learnable:
            self.log_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_scale", value)
        self.min_log, self.max_log = math.log(1.0 / max_tau), math.log(1.0 / min_tau)

    @property
    def scale(self) -> Tensor:
        return self.log_scale.clamp(self.min_log, self.max_log).exp()

    @property
    def tau(self) -> Tensor:
        return 1.0 / self.scale

    def forward(self, logits: Tensor) -> Tensor:
        return logits * self.scale

    def extra_repr(self) -> str:
        return f"tau={float(self.tau):.4g}, learnable={self.learnable}"


def _scale(logits: Tensor, tau: float | Temperature) -> Tensor:
    return tau(logits) if isinstance(tau, Temperature) else logits / tau


# ---------------------------------------------------------------------------------------------
# the two contrastive terms every method is built from (``reclf.methods.VLModel.loss`` composes them)


def global_contrastive_loss(
    img: Tensor,
    txt: Tensor,
    tau: float | Temperature,
    i2t_weight: float = 0.5,
    sum_directions: bool = False,
    extra_negatives: Tensor | None = None,
) -> Tensor:
    """InfoNCE on the cosines of global embeddings divided by ``tau`` (every method's global term).

    ConVIRT: ``tau 0.1``, ``i2t_weight 0.75``; GLoRIA: ``tau 0.1`` (``temp3 = 10``), directions summed;
    MGCA's instance loss: ``tau 0.07``, directions summed; RECLF: ``tau_g 0.07``, the symmetric mean.
    ``extra_negatives[I, E]``: cosines of reports only image ``i`` is contrasted with (as for the local term).
    """
    scores = _with_extra_negatives(cosine_logits(img, txt), extra_negatives)
    return info_nce(_scale(scores, tau), i2t_weight=i2t_weight, sum_directions=sum_directions)


def _with_extra_negatives(scores: Tensor, extra_negatives: Tensor | None) -> Tensor:
    """``scores[I, T]`` with ``extra_negatives[I, E]`` appended as columns that join the image->report
    softmax only (``info_nce`` reads the report->image side from the first ``I`` columns)."""
    if extra_negatives is None:
        return scores
    if extra_negatives.dim() != 2 or extra_negatives.shape[0] != scores.shape[0]:
        raise ValueError(f"extra_negatives must be [{scores.shape[0]}, E]; got {tuple(extra_negatives.shape)}")
    return torch.cat([scores, extra_negatives.to(scores.dtype)], dim=1)


def local_contrastive_loss(
    scores: Tensor,
    tau: float | Temperature,
    pairs: Tensor | None = None,
    n_txt: int | None = None,
    i2t_weight: float = 0.5,
    sum_directions: bool = False,
    extra_negatives: Tensor | None = None,
) -> Tensor:
    """InfoNCE on aggregated word-region scores divided by ``tau`` (GLoRIA's and RECLF's local term).

    ``scores[I, T]`` for all pairs, or ``scores[I, K]`` for the candidates ``pairs[I, K]`` (positive first,
    ``topk_candidates``): the unscored pairs are left out of both directions' softmax.
    ``extra_negatives[I, E]``: scores of reports that only image ``i`` is contrasted with (its own report
    with the sides swapped: binding-aware negatives); they join the image->report softmax only, ``-inf``
    where there is none.
    """
    if pairs is not None:
        scores = scatter_candidate_scores(scores, pairs, n_txt if n_txt is not None else scores.shape[0])
    scores = _with_extra_negatives(scores, extra_negatives)
    return info_nce(_scale(scores, tau), i2t_weight=i2t_weight, sum_directions=sum_directions)


# ---------------------------------------------------------------------------------------------
# MGCA's token-level loss


def clip_percentile_weights(
    weights: Tensor, mask: Tensor, low: float = MGCA_CLIP[0], high: float = MGCA_CLIP[1]
) -> Tensor:
    """MGCA's token weights: clip each row's non-zero valid values to their [low, high] quantiles
    (linear interpolation, as ``torch.quantile``), zero the rest, normalise to sum 1.

    Vectorised over rows with different numbers of valid entries. A row with no usable weight
    (all zero) falls back to uniform over its mask; a row with an empty mask is all zeros.
    """
    mask = mask.bool()
    w = weights.detach().float()
    usable = mask & (w > 0)
    n = usable.sum(dim=1)
    ordered = w.masked_fill(~usable, float("inf")).sort(dim=1).values

    def quantile(q: float) -> Tensor:
        pos = q * (n - 1).clamp_min(0).to(w.dtype)
        lo = pos.floor().long()
        hi = torch.minimum(lo + 1, (n - 1).clamp_min(0))
        frac = pos - lo.to(w.dtype)
        v_lo = ordered.gather(1, lo.unsqueeze(1)).squeeze(1)
        v_hi = ordered.gather(1, hi.unsqueeze(1)).squeeze(1)
        return v_lo + frac * (v_hi - v_lo)

    has = n > 0
    q_lo = torch.where(has, quantile(low), torch.zeros_like(n, dtype=w.dtype))
    q_hi = torch.where(has, quantile(high), torch.zeros_like(n, dtype=w.dtype))
    clipped = torch.where(usable, torch.minimum(torch.maximum(w, q_lo[:, None]), q_hi[:, None]), 0.0)
    total = clipped.sum(dim=1, keepdim=True)
    uniform = mask.to(w.dtype) / mask.sum(dim=1, keepdim=True).clamp_min(1).to(w.dtype)
    out = torch.where(total > 0, clipped / total.clamp_min(1e-30), uniform)
    return out.to(weights.dtype)


def _weighted_intra_ce(queries: Tensor, contexts: Tensor, mask: Tensor, weights: Tensor, tau: float) -> Tensor:
    """MGCA's within-pair CE: ``S[b, i, k] = q_bi . c_bk / tau``; the diagonal is the target, rows
    (query vs all contexts) and columns (context vs all queries) averaged; each term weighted by the
    query's weight, summed and divided by the batch size. Masked entries are no candidates."""
    b, n, _ = queries.shape
    sim = torch.bmm(queries, contexts.transpose(1, 2)) / tau  # [B, N, N]
    pair_mask = mask.unsqueeze(2) & mask.unsqueeze(1)
    fill = torch.finfo(sim.dtype).min
    target = torch.arange(n, device=sim.device).repeat(b)
    rows = F.cross_entropy(sim.masked_fill(~pair_mask, fill).reshape(b * n, n), target, reduction="none")
    cols = F.cross_entropy(
        sim.masked_fill(~pair_mask, fill).transpose(1, 2).reshape(b * n, n), target, reduction="none"
    )
    valid = mask.reshape(-1)
    w = weights.reshape(-1)
    zero = torch.zeros_like(rows)
    loss_rows = (torch.where(valid, rows, zero) * w).sum() / b
    loss_cols = (torch.where(valid, cols, zero) * w).sum() / b
    return (loss_rows + loss_cols) / 2


def mgca_token_loss(
    words: Tensor,
    word_mask: Tensor,
    patches: Tensor,
    word_weights: Tensor | None = None,
    patch_weights: Tensor | None = None,
    tau: float = MGCA_LOCAL_TAU,
    bidirectional: bool = True,
    clip: tuple[float, float] = MGCA_CLIP,
) -> dict[str, Tensor]:
    """MGCA's token-level intra-pair alignment.

    Word side: each word attends over its own image's patches (``softmax(w . p / tau)``), giving a
    normalised context; a within-report CE asks each word to pick its own context (and each context
    its own word), weighted by ``word_weights`` — the text encoder's last-layer [CLS] attention,
    clipped to its 10th-90th percentile of non-zero values and renormalised (uniform if ``None``).
    Patch side (``bidirectional``): the mirror image, patches attending over the valid words, weighted
    by ``patch_weights`` (ViT CLS attention, clipped the same way) or uniformly (CNNs).

    Shapes: ``words[B, W, d]``, ``word_mask[B, W]``, ``patches[B, R, d]``, weights ``[B, W]`` / ``[B, R]``.
    Returns ``{"word": ..., "patch": ..., "loss": word + patch}``.
    Deviations from MGCA's code, on purpose: masked words are never candidates (MGCA leaves [PAD]
    contexts in the word-side CE), and patch contexts are always normalised (MGCA skips it for ViT).
    """
    word_mask = word_mask.bool()
    ww = word_mask.float() if word_weights is None else word_weights
    ww = clip_percentile_weights(ww, word_mask, *clip)
    word_ctx, _ = attend_paired(words, patches, tau, "softmax")
    loss_word = _weighted_intra_ce(words, word_ctx, word_mask, ww, tau)
    if not bidirectional:
        return {"word": loss_word, "patch": loss_word.new_zeros(()), "loss": loss_word}
    b, r, _ = patches.shape
    patch_mask = torch.ones(b, r, dtype=torch.bool, device=patches.device)
    if patch_weights is None:
        pw = patch_mask.to(patches.dtype) / r
    else:
        pw = clip_percentile_weights(patch_weights, patch_mask, *clip)
    patch_ctx, _ = attend_paired(patches, words, tau, "softmax", region_mask=word_mask)
    loss_patch = _weighted_intra_ce(patches, patch_ctx, patch_mask, pw, tau)
    return {"word": loss_word, "patch": loss_patch, "loss": loss_word + loss_patch}


# ---------------------------------------------------------------------------------------------
# hard negatives (RECLF's optional top-k candidates)


@torch.no_grad()
def topk_candidates(global_sim: Tensor, k: int) -> Tensor:
    """Report candidates per image: the positive (report ``i``) first, then the ``k`` hardest negatives
    (highest global similarity). ``global_sim[I, T]`` with ``T >= I`` -> ``LongTensor[I, min(k, T-1) + 1]``."""
    n_img, n_txt = global_sim.shape
    if n_txt < n_img:
        raise ValueError(f"topk_candidates: need at least as many reports as images, got {n_img} x {n_txt}")
    k = max(0, min(int(k), n_txt - 1))
    pos = torch.arange(n_img, device=global_sim.device)
    sim = global_sim.clone()
    sim[pos, pos] = float("-inf")
    neg = sim.topk(k, dim=1).indices if k > 0 else pos.new_zeros(n_img, 0)
    return torch.cat([pos.unsqueeze(1), neg], dim=1)


def scatter_candidate_scores(scores: Tensor, pairs: Tensor, n_txt: int) -> Tensor:
    """Place ``scores[I, K]`` of the candidates ``pairs[I, K]`` into an ``[I, n_txt]`` matrix, ``-inf`` elsewhere."""
    full = scores.new_full((scores.shape[0], n_txt), float("-inf"))
    return full.scatter(1, pairs, scores)


__all__ = [
    "MGCA_CLIP",
    "MGCA_LOCAL_TAU",
    "PrototypeLoss",
    "Temperature",
    "clip_percentile_weights",
    "cosine_logits",
    "global_contrastive_loss",
    "info_nce",
    "local_contrastive_loss",
    "mgca_token_loss",
    "scatter_candidate_scores",
    "sinkhorn",
    "topk_candidates",
]
