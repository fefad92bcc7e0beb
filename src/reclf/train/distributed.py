"""Cross-rank gathering of embeddings *with* gradients (the open_clip "gather_with_grad" recipe).

Contrastive losses want the global batch as negatives. ``all_gather_with_grad`` returns the
``[world * B, ...]`` concatenation in rank order and lets gradients flow back to every rank's own
slice (``torch.distributed.nn.functional.all_gather`` is differentiable; the plain
``torch.distributed.all_gather`` is not). Every rank then computes the *full* global loss; DDP
averages the gradients over ranks, which gives exactly the gradient of the full-batch loss
(each rank's loss is the same number, and the sum over ranks of the slice-gradients, divided by
``world``, is the full gradient because each rank's backward already reaches every slice).

When torch.distributed is not initialised (or world size is 1) no gather is needed and
:func:`make_gather` returns ``None``, so the methods see exactly the single-process code path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

Gather = Callable[[torch.Tensor], torch.Tensor]


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``[B, ...]`` on every rank -> ``[world * B, ...]`` in rank order, differentiable.

    Every rank must pass the same ``B`` (the sampler drops the tail so that it is so).
    """
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def make_gather() -> Gather | None:
    """The ``gather`` callable for ``model.loss(batch, gather=...)``; ``None`` in a single process."""
    return all_gather_with_grad if world_size() > 1 else None
