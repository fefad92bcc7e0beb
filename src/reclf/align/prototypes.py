"""MGCA's disease-level prototype loss (cross-modal clustering with swapped prediction).

Follows MGCA (``mgca/models/mgca/mgca_module.py``; anchors §2): ``K = 500`` prototypes as a bias-free
linear layer with unit-norm rows; the global image and report embeddings are scored against them;
Sinkhorn-Knopp (3 iterations, ``eps = 0.05``) turns each modality's scores into balanced soft codes;
each modality's codes supervise the *other* modality's softmax at ``tau = 0.2`` (swapped prediction),
and the two directions are averaged. The prototypes are frozen during MGCA's first epoch: set
``frozen = True`` (the loss still trains the encoders; the prototypes get no gradient).

One difference from MGCA's code, on purpose: MGCA re-normalises the weight rows in place at the start
of each step; here the rows are normalised inside ``forward`` (``F.normalize``), which is the same
forward value, never mutates a parameter that a pending graph has saved, and projects the radial part
out of the gradient. ``renormalize_()`` is there for callers that also want the stored rows unit-norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MGCA_N_PROTOTYPES = 500
MGCA_PROTO_TAU = 0.2
MGCA_SINKHORN_EPS = 0.05
MGCA_SINKHORN_ITERS = 3


@torch.no_grad()
def sinkhorn(scores: Tensor, n_iters: int = MGCA_SINKHORN_ITERS, eps: float = MGCA_SINKHORN_EPS) -> Tensor:
    """Sinkhorn-Knopp soft assignment of ``B`` samples to ``K`` prototypes: ``scores[B, K] -> codes[B, K]``.

    ``Q = exp(scores / eps)``, alternately rescaled so that every prototype gets mass ``1/K`` and every
    sample ``1/B``; the returned codes are the per-sample distributions (rows sum to 1). The global
    maximum is subtracted before ``exp`` (it cancels in the normalisation) so nothing overflows.
    """
    if scores.dim() != 2:
        raise ValueError(f"sinkhorn expects scores [B, K], got {tuple(scores.shape)}")
    q = torch.exp((scores.float() - scores.float().max()) / eps).t()  # [K, B]
    q = q / q.sum()
    k, b = q.shape
    for _ in range(n_iters):
        q = q * ((1.0 / k) / q.sum(dim=1, keepdim=True).clamp_min(1e-30))
        q = q * ((1.0 / b) / q.sum(dim=0, keepdim=True).clamp_min(1e-30))
    return (q / q.sum(dim=0, keepdim=True).clamp_min(1e-30)).t().to(scores.dtype)


class PrototypeLoss(nn.Module):
    """``forward(img_global[B, d], txt_global[B, d]) -> loss`` (MGCA's ``loss_proto``)."""

    def __init__(
        self,
        dim: int,
        n_prototypes: int = MGCA_N_PROTOTYPES,
        tau: float = MGCA_PROTO_TAU,
        eps: float = MGCA_SINKHORN_EPS,
        sinkhorn_iters: int = MGCA_SINKHORN_ITERS,
        frozen: bool = False,
    ) -> None:
        super().__init__()
        self.prototypes = nn.Linear(dim, n_prototypes, bias=False)
        self.tau, self.eps, self.sinkhorn_iters = tau, eps, sinkhorn_iters
        self.frozen = frozen

    @torch.no_grad()
    def renormalize_(self) -> None:
        """Make the stored prototype rows unit-norm (MGCA does this at every step)."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def scores(self, x: Tensor) -> Tensor:
        """Cosine-like scores ``[B, K]`` of (normalised) embeddings against the unit-norm prototypes."""
        w = F.normalize(self.prototypes.weight, dim=1)
        if self.frozen:
            w = w.detach()
        return x @ w.t()

    def forward(self, img_global: Tensor, txt_global: Tensor) -> Tensor:
        img_out, txt_out = self.scores(img_global), self.scores(txt_global)
        img_code = sinkhorn(img_out.detach(), self.sinkhorn_iters, self.eps)
        txt_code = sinkhorn(txt_out.detach(), self.sinkhorn_iters, self.eps)
        loss_i2t = -(img_code * F.log_softmax(txt_out / self.tau, dim=1)).sum(dim=1).mean()
        loss_t2i = -(txt_code * F.log_softmax(img_out / self.tau, dim=1)).sum(dim=1).mean()
        return (loss_i2t + loss_t2i) / 2

    def extra_repr(self) -> str:
        return f"tau={self.tau}, eps={self.eps}, sinkhorn_iters={self.sinkhorn_iters}, frozen={self.frozen}"


__all__ = [
    "MGCA_N_PROTOTYPES",
    "MGCA_PROTO_TAU",
    "MGCA_SINKHORN_EPS",
    "MGCA_SINKHORN_ITERS",
    "PrototypeLoss",
    "sinkhorn",
]
