"""A U-Net decoder in plain torch on any encoder's feature pyramid.

The encoder provides ``feature_pyramid(x) -> [f_1 .. f_n]`` (finest first, strides
``pyramid_strides``) and ``pyramid_channels``. The decoder walks from the coarsest map up: each
step upsamples to the next finer map's size, concatenates it (the skip connection) and applies
two 3x3 conv-BN-ReLU; a last block upsamples to the input size and a 1x1 conv gives one logit
per pixel. It works for CNNs (strides 2..32) and for ViTs (a single stride-16 map) alike.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


SMP_CHANNELS = (256, 128, 64, 32, 16)  # segmentation-models' U-Net decoder widths, coarse to fine


class UNetDecoder(nn.Module):
    """``channels`` (coarse to fine, one per pyramid level; the segmentation-models convention, e.g.
    256-128-64-32-16 on ResNet-50) sets the decoder widths; without it the widths are ``width * 2**level``
    capped at ``max_width`` (a small decoder for CPU runs)."""

    def __init__(self, pyramid_channels: list[int], width: int = 32, max_width: int = 128,
                 channels: list[int] | tuple[int, ...] | None = None) -> None:
        super().__init__()
        if not pyramid_channels:
            raise ValueError("the encoder has an empty feature pyramid; it cannot drive a U-Net decoder")
        chans = list(pyramid_channels)
        if channels:
            if len(channels) < len(chans):
                raise ValueError(f"decoder channels {list(channels)} give fewer widths than the encoder's "
                                 f"{len(chans)} pyramid levels")
            widths = list(channels)[: len(chans)][::-1]  # finest first
            width = widths[0]
        else:
            widths = [min(max_width, width * 2**i) for i in range(len(chans))]
        self.widths = widths[::-1]
        self.bottom = _block(chans[-1], widths[-1])
        self.ups = nn.ModuleList(
            [_block(widths[i + 1] + chans[i], widths[i]) for i in range(len(chans) - 2, -1, -1)]
        )
        self.final = _block(widths[0], width)
        self.head = nn.Conv2d(width, 1, 1)
        # prior: lesions cover a few percent of the image, so start predicting "empty" (p ~ 0.05)
        # rather than a coin flip that thresholds to full masks for the first epochs
        assert self.head.bias is not None  # nn.Conv2d(bias=True)
        nn.init.constant_(self.head.bias, -3.0)

    def forward(self, feats: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        x = self.bottom(feats[-1])
        for j, up in enumerate(self.ups):
            skip = feats[len(feats) - 2 - j]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = up(torch.cat([x, skip], 1))
        x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
        return self.head(self.final(x))


class Segmenter(nn.Module):
    """Encoder + U-Net decoder; ``freeze_encoder`` keeps the encoder fixed and in eval mode."""

    def __init__(self, encoder: Any, freeze_encoder: bool = True, width: int = 32,
                 channels: list[int] | tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.freeze_encoder = freeze_encoder
        self.decoder = UNetDecoder(list(encoder.pyramid_channels), width, channels=channels)
        if freeze_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> Segmenter:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # frozen batch-norm statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.freeze_encoder:
            with torch.no_grad():
                feats = self.encoder.feature_pyramid(x)
        else:
            feats = self.encoder.feature_pyramid(x)
        return self.decoder(feats, tuple(x.shape[-2:]))


LOSSES = ("bce_dice", "focal_dice")


def soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice over the whole batch, smoothed by 1 (stable when many masks are empty)."""
    p = torch.sigmoid(logits)
    return (2 * (p * target).sum() + 1.0) / (p.sum() + target.sum() + 1.0)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss: BCE weighted by (1 - p_t)^gamma, mean over pixels."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    return ((1 - p_t) ** gamma * bce).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "bce_dice",
                      focal_weight: float = 10.0) -> torch.Tensor:
    """``bce_dice``: BCE + (1 - soft Dice); ``focal_dice``: ``focal_weight`` x focal - log(soft Dice), the
    mixed loss GLoRIA and MGCA train their segmentation with (weight 10, gamma 2)."""
    if kind == "focal_dice":
        return focal_weight * focal_loss(logits, target) - torch.log(soft_dice(logits, target))
    if kind != "bce_dice":
        raise ValueError(f"segmentation loss {kind!r}: choose one of {LOSSES}")
    return F.binary_cross_entropy_with_logits(logits, target) + (1 - soft_dice(logits, target))
