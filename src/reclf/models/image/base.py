"""The image-encoder interface shared by every backbone.

Why a common base: methods, linear probes and the segmentation decoder only ever talk to
``ImageEncoder`` (``forward`` -> global vector + local grid, ``feature_pyramid`` -> multi-scale maps),
so a backbone can be swapped with one config key. The base also owns the two things every backbone
needs and that are easy to get subtly wrong:

- *input normalisation*: images arrive as float tensors in [0, 1]; each encoder normalises them with
  statistics suited to its weights (kept as persistent buffers ``input_mean`` / ``input_std`` so a
  saved model restores the statistics it was trained with, independent of the config);
- *freezing*: a frozen backbone has no trainable parameters and its BatchNorm layers stay in eval
  mode even when the surrounding model is put in train mode (otherwise running statistics drift).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reclf.models.features import ImageEncoderOutput

# ImageNet RGB statistics (torchvision / timm defaults). For one-channel input the mean of the RGB
# statistics is used, matching a first convolution made by summing the RGB filters.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Random init: map [0, 1] to [-1, 1].
HALF = (0.5, 0.5, 0.5)
# EfficientNet-Lite was trained in TensorFlow with inception-style preprocessing ((x*255 - 127) / 128).
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3

# Stage names accepted by ``local_stage`` for every CNN backbone (ResNet nomenclature): the stage at
# stride 8, 16 and 32. A config that says ``local_stage: layer4`` thus works across backbones.
STAGE_STRIDES = {"layer2": 8, "layer3": 16, "layer4": 32}


def channel_stats(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Per-channel statistics for ``in_chans`` channels from RGB statistics (gray = mean of RGB)."""
    if in_chans == 3:
        return tuple(float(v) for v in values)
    if in_chans == 1:
        return (float(sum(values) / len(values)),)
    raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")


class ImageEncoder(nn.Module):
    """Base class: subclasses implement ``_forward`` and ``_pyramid`` on normalised input.

    Attributes every subclass sets: ``name``, ``global_dim``, ``local_dim``, ``local_stage``,
    ``local_stride``, ``pyramid_channels``, ``pyramid_strides``, and ``first_conv`` (the state-dict key
    of the first convolution's weight, adapted when loading 3-channel weights into 1 channel).
    """

    name: str = "image-encoder"
    global_dim: int
    local_dim: int
    local_stage: str
    local_stride: int
    pyramid_channels: list[int]
    pyramid_strides: list[int]
    first_conv: str = ""
    input_mean: Tensor  # buffers [1, C, 1, 1]: the input normalisation (set_input_stats)
    input_std: Tensor
    # state-dict prefixes of classification heads, dropped silently when loading weights
    head_prefixes: tuple[str, ...] = ()
    # what ``build_image_encoder`` loaded (a ``weights.LoadReport``), None for a random init
    load_report: Any = None
    # upsample inputs to this size before the backbone (``image_encoder.resize_to``; GLoRIA / MGCA: 299)
    resize_to: int | None = None

    def __init__(self, in_chans: int = 1) -> None:
        super().__init__()
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 (gray) or 3 (RGB), got {in_chans}")
        self.in_chans = in_chans
        self.frozen = False
        self.register_buffer("input_mean", torch.tensor(channel_stats(HALF, in_chans)).view(1, -1, 1, 1))
        self.register_buffer("input_std", torch.tensor(channel_stats(HALF, in_chans)).view(1, -1, 1, 1))

    # -- input ---------------------------------------------------------------------------------

    def set_input_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Set the normalisation from RGB statistics (reduced to gray for one-channel encoders)."""
        self.input_mean.copy_(torch.tensor(channel_stats(mean, self.in_chans)).view(1, -1, 1, 1))
        self.input_std.copy_(torch.tensor(channel_stats(std, self.in_chans)).view(1, -1, 1, 1))

    def normalize(self, x: Tensor) -> Tensor:
        """Check the shape of ``x`` ([B, C, H, W] in [0, 1]) and normalise it for this backbone.

        A one-channel image given to a three-channel encoder is repeated over the channels; the
        reverse is an error (the caller would silently lose colour information).
        """
        if x.ndim != 4:
            raise ValueError(f"{self.name}: expected images [B, C, H, W], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{self.name}: expected float images in [0, 1], got dtype {x.dtype}")
        c = x.shape[1]
        if c != self.in_chans:
            if c == 1 and self.in_chans == 3:
                x = x.expand(-1, 3, -1, -1)
            else:
                raise ValueError(
                    f"{self.name}: built for {self.in_chans} input channel(s) but got {c}; "
                    f"set image_encoder.in_chans={c}"
                )
        return (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)

    # -- the interface -------------------------------------------------------------------------

    def forward(self, x: Tensor) -> ImageEncoderOutput:
        """``x``: [B, C, H, W] float in [0, 1] -> global [B, global_dim], local [B, local_dim, h, w].

        With ``resize_to`` the input is first resized to ``resize_to`` x ``resize_to`` (bilinear,
        ``align_corners=True``, GLoRIA's and MGCA's ``nn.Upsample(size=(299, 299))``), which sets the region
        grid. ``feature_pyramid`` is left at the given size (dense tasks decode to the input's resolution).
        """
        x = self.normalize(x)
        if self.resize_to is not None and tuple(x.shape[-2:]) != (self.resize_to, self.resize_to):
            x = F.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=True)
        return self._forward(x)

    def feature_pyramid(self, x: Tensor) -> list[Tensor]:
        """Multi-scale feature maps, shallow to deep, with ``pyramid_channels`` / ``pyramid_strides``."""
        return self._pyramid(self.normalize(x))

    def _forward(self, x: Tensor) -> ImageEncoderOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def _pyramid(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def local_grid(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the local grid for an input of ``image_size`` (computed by a dry forward)."""
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                ref = self.input_mean
                out = self.forward(torch.zeros(1, self.in_chans, h, w, dtype=ref.dtype, device=ref.device))
        finally:
            self.train(was_training)
        return int(out.local.shape[-2]), int(out.local.shape[-1])

    # -- weights -------------------------------------------------------------------------------

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Backbone-specific fixes applied to a foreign state dict before loading (default: none)."""
        return state

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs):
        """A foreign state dict (torchvision / timm) lacks our normalisation buffers: keep their values.

        This lets ``load_state_dict(torchvision_state, strict=True)`` succeed while our own saved models
        still restore the statistics they were trained with.
        """
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs)
        for name in ("input_mean", "input_std"):
            if prefix + name not in state_dict and prefix + name in missing_keys:
                missing_keys.remove(prefix + name)

    # -- freezing ------------------------------------------------------------------------------

    def freeze(self) -> None:
        """No trainable parameters; BatchNorm stays in eval mode (see ``train``)."""
        self.frozen = True
        for p in self.parameters():
            p.requires_grad_(False)
        self.train(self.training)

    def unfreeze(self) -> None:
        """Make every parameter trainable again (fine-tuning after a frozen warm-up)."""
        self.frozen = False
        for p in self.parameters():
            p.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if self.frozen:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def resolve_stage(encoder_name: str, local_stage: str | None, default: str, allowed: Sequence[str]) -> str:
    """Validate ``local_stage`` against the stages a backbone offers; ``None`` gives the default."""
    stage = default if local_stage is None else local_stage
    if stage not in allowed:
        raise ValueError(
            f"{encoder_name}: unknown image_encoder.local_stage {local_stage!r}; choose one of {', '.join(allowed)}"
        )
    return stage
