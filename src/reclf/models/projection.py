"""Projection heads: backbone features -> the joint space (width ``d``), L2-normalised.

Two kinds, as in the methods' own code (docs/methods.md):

- ``"linear"`` — GLoRIA: the global head is a ``Linear`` (2048 -> 768 there), the local head a bias-free
  1x1 convolution, i.e. a bias-free ``Linear`` applied to every region / word vector;
- ``"mlp"`` — MGCA: ``Linear -> BatchNorm -> ReLU -> Linear -> BatchNorm(affine=False)``, the local head
  being the same MLP applied per token (MGCA writes it as ``Conv1d`` with kernel 1).

Both heads end with L2 normalisation (``normalize=True``, the default), because every score downstream
is a cosine. The local head accepts tokens ``[B, N, C]`` (words, ViT patches) or a feature map
``[B, C, h, w]`` (CNN regions, flattened row-major to ``[B, h*w, d]``), and an optional mask of valid
tokens: masked tokens are left out of the BatchNorm statistics (so padding never changes a valid
token's projection) and come out as zeros.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

ProjectionKind = Literal["linear", "mlp"]
PROJECTION_KINDS: tuple[str, ...] = ("linear", "mlp")
DEFAULT_JOINT_DIM = 128  # MGCA's emb_dim; GLoRIA uses 768
NORM_EPS = 1e-6


def _check_kind(kind: str) -> None:
    if kind not in PROJECTION_KINDS:
        raise ValueError(f"unknown projection kind {kind!r}; choose one of {PROJECTION_KINDS}")


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """MGCA's projection MLP: Linear -> BN -> ReLU -> Linear -> BN(affine=False)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
        nn.BatchNorm1d(out_dim, affine=False),
    )


class _ProjectionHead(nn.Module):
    """Shared construction: ``linear`` (with a bias for global heads, none for local ones) or MGCA's MLP."""

    linear_bias: bool = True

    def __init__(
        self,
        in_dim: int,
        out_dim: int = DEFAULT_JOINT_DIM,
        kind: ProjectionKind = "linear",
        hidden_dim: int | None = None,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        _check_kind(kind)
        self.kind, self.in_dim, self.out_dim, self.normalize = kind, in_dim, out_dim, normalize
        if kind == "linear":
            self.net: nn.Module = nn.Linear(in_dim, out_dim, bias=self.linear_bias)
        else:
            self.net = _mlp(in_dim, hidden_dim or in_dim, out_dim)


class GlobalProjection(_ProjectionHead):
    """Project a pooled vector ``[B, C]`` to ``[B, d]`` (``linear``: GLoRIA; ``mlp``: MGCA)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[-1] != self.in_dim:
            raise ValueError(f"GlobalProjection expects [B, {self.in_dim}], got {tuple(x.shape)}")
        y = self.net(x)
        return F.normalize(y, dim=-1, eps=NORM_EPS) if self.normalize else y


class LocalProjection(_ProjectionHead):
    """Project per-token features to the joint space.

    ``forward(x[B, N, C] | x[B, C, h, w], mask[B, N] | None) -> [B, N, d]`` (a map is flattened row-major,
    ``N = h*w``). ``linear`` is GLoRIA's bias-free 1x1 convolution; ``mlp`` is MGCA's per-token MLP.
    """

    linear_bias = False

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if x.dim() == 4:  # [B, C, h, w] feature map -> [B, h*w, C]
            x = x.flatten(2).transpose(1, 2)
        if x.dim() != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(
                f"LocalProjection expects [B, N, {self.in_dim}] or [B, {self.in_dim}, h, w], got {tuple(x.shape)}"
            )
        b, n, _ = x.shape
        if mask is None:
            y = self.net(x.reshape(b * n, -1)).reshape(b, n, -1)
        else:
            if mask.shape != (b, n):
                raise ValueError(f"mask must be [B, N] = {(b, n)}, got {tuple(mask.shape)}")
            mask = mask.bool()
            y = x.new_zeros(b, n, self.out_dim)
            if mask.any():
                # only valid tokens go through the head: BatchNorm statistics never see padding
                head = self.net(x[mask])  # bf16 under autocast, so the zeros follow its dtype
                y = y.to(head.dtype).masked_scatter(mask.unsqueeze(-1), head)
        return F.normalize(y, dim=-1, eps=NORM_EPS) if self.normalize else y


def build_projection(
    scope: Literal["global", "local"],
    in_dim: int,
    out_dim: int = DEFAULT_JOINT_DIM,
    kind: ProjectionKind = "linear",
    hidden_dim: int | None = None,
    normalize: bool = True,
) -> GlobalProjection | LocalProjection:
    """Factory: ``scope`` ``"global"`` or ``"local"``, ``kind`` ``"linear"`` (GLoRIA) or ``"mlp"`` (MGCA)."""
    if scope == "global":
        return GlobalProjection(in_dim, out_dim, kind, hidden_dim, normalize)
    if scope == "local":
        return LocalProjection(in_dim, out_dim, kind, hidden_dim, normalize)
    raise ValueError(f"unknown projection scope {scope!r}; choose 'global' or 'local'")


__all__ = [
    "DEFAULT_JOINT_DIM",
    "PROJECTION_KINDS",
    "GlobalProjection",
    "LocalProjection",
    "build_projection",
]
