"""Masked reductions that stay finite when every entry of a row is masked.

A report can have zero valid words (an empty FINDINGS section, everything truncated), and a masked
entry must never change a result. Filling with ``-inf`` breaks both: an all-masked softmax or
log-sum-exp gives NaN, in the forward or the backward pass. These helpers fill with the dtype's most
negative *finite* value instead, so masked entries get exactly zero weight and an all-masked row gives
zero weights (softmax) or ``empty_value`` (pooling), with finite gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _neg_fill(x: Tensor) -> float:
    return torch.finfo(x.dtype).min


def masked_softmax(x: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` restricted to ``mask`` (broadcastable to ``x``); masked entries, all-masked rows: 0."""
    mask = mask.bool()
    p = torch.softmax(x.masked_fill(~mask, _neg_fill(x)), dim=dim)
    return p * mask


def masked_logsumexp(x: Tensor, mask: Tensor, dim: int = -1, empty_value: float = 0.0) -> Tensor:
    """``log sum exp`` over the unmasked entries of ``dim``; ``empty_value`` where a row has none."""
    mask = mask.bool().expand_as(x)
    out = torch.logsumexp(x.masked_fill(~mask, _neg_fill(x)), dim=dim)
    return torch.where(mask.any(dim=dim), out, torch.full_like(out, empty_value))


def masked_mean(x: Tensor, mask: Tensor, dim: int = -1, empty_value: float = 0.0) -> Tensor:
    """Mean over the unmasked entries of ``dim`` (``x`` may carry trailing feature dims); ``empty_value`` if none."""
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(-1)
    total = (x.masked_fill(m == 0, 0.0)).sum(dim=dim)
    count = m.sum(dim=dim)
    out = total / count.clamp_min(1.0)
    return torch.where(count > 0, out, torch.full_like(out, empty_value))


def masked_max(x: Tensor, mask: Tensor, dim: int = -1, empty_value: float = 0.0) -> tuple[Tensor, Tensor]:
    """Max over the unmasked entries of ``dim`` and its index; ``empty_value`` (index 0) where a row has none."""
    mask = mask.bool().expand_as(x)
    values, index = x.masked_fill(~mask, _neg_fill(x)).max(dim=dim)
    any_valid = mask.any(dim=dim)
    return torch.where(any_valid, values, torch.full_like(values, empty_value)), index.masked_fill(~any_valid, 0)
