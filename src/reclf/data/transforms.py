"""Image pipelines for training and evaluation (numpy / torch only).

A radiograph becomes a float tensor ``[1, S, S]`` in ``[0, 1]`` (``S = image_encoder.image_size``):

- **eval**: resize so the long side is ``S`` (aspect ratio kept, antialiased) and pad the short
  side symmetrically with black. Nothing random, so inference is reproducible.
- **train**: the same resize + pad, then one random *orientation-preserving* affine warp that
  folds together a random resized crop (zoom), a small rotation and a translation, then
  intensity (brightness) and contrast jitter and an optional gamma jitter.

There is deliberately **no horizontal flip** (and the affine matrix never has a negative
determinant): a flip swaps the patient's left and right, and reports name the side ("left lower
lobe opacity"), so a flipped image would teach the model the wrong side. ``TrainTransform``
asserts this on every sample.

Randomness comes only from the ``numpy.random.Generator`` passed in, which the dataset derives
from ``(seed, epoch, index)`` — so augmentation does not depend on the worker that loads a
sample, on the number of workers, or on whether a run was resumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reclf.data.images import load_image


def to_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``[H, W]`` (or ``[1, H, W]``) array -> float32 tensor ``[1, H, W]``."""
    t = torch.as_tensor(np.asarray(image, dtype=np.float32)) if isinstance(image, np.ndarray) else image.float()
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] != 1:
        raise ValueError(f"expected a grayscale image [H, W] or [1, H, W], got shape {tuple(t.shape)}")
    return t


def resize_and_pad(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[1, H, W]`` so its long side is ``size`` (aspect kept) and pad to ``[1, size, size]``.

    Padding is symmetric and black (0), like MGCA / GLoRIA's resize-and-pad: the anatomy is never
    stretched, and nothing is cropped away at evaluation time.
    """
    _, h, w = image.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)[0]
    top, left = (size - nh) // 2, (size - nw) // 2
    out = image.new_zeros((1, size, size))
    out[:, top : top + nh, left : left + nw] = image
    return out.clamp_(0.0, 1.0)


@dataclass
class AugmentConfig:
    """Strength of the training augmentation (defaults: mild, as used by MGCA / GLoRIA)."""

    scale: tuple[float, float] = (0.85, 1.15)  # zoom factor (>1 = crop in, as a random resized crop)
    rotation_deg: float = 10.0
    translate: float = 0.06  # fraction of the image size
    brightness: float = 0.1  # additive, in intensity units
    contrast: float = 0.2  # multiplicative around the mean: factor in [1 - c, 1 + c]
    gamma: float = 0.0  # log-uniform gamma in [exp(-g), exp(g)]; 0 = off


def affine_matrix(rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """A random 2x3 output->input matrix in normalised coordinates (zoom, rotation, translation).

    The linear part is ``R(theta) / s`` with ``s > 0``: a rotation and an isotropic scaling, whose
    determinant is always positive, so left stays left.
    """
    s = float(np.exp(rng.uniform(np.log(cfg.scale[0]), np.log(cfg.scale[1]))))
    theta = math.radians(float(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)))
    tx, ty = (float(v) for v in rng.uniform(-cfg.translate, cfg.translate, size=2) * 2.0)
    c, si = math.cos(theta) / s, math.sin(theta) / s
    return np.array([[c, -si, tx], [si, c, ty]], dtype=np.float32)


def apply_affine(image: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """Warp ``[1, H, W]`` with the 2x3 normalised output->input ``matrix`` (black outside)."""
    det = float(matrix[0, 0] * matrix[1, 1] - matrix[0, 1] * matrix[1, 0])
    if det <= 0:  # a reflection would swap the patient's sides
        raise ValueError("refusing an affine transform with a reflection (it would swap left and right)")
    theta = torch.as_tensor(matrix, dtype=image.dtype)[None]
    grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def jitter_intensity(image: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Brightness, contrast and optional gamma jitter; the result stays in ``[0, 1]``."""
    mean = image.mean()
    contrast = float(rng.uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast))
    brightness = float(rng.uniform(-cfg.brightness, cfg.brightness))
    image = ((image - mean) * contrast + mean + brightness).clamp(0.0, 1.0)
    if cfg.gamma > 0:
        gamma = float(np.exp(rng.uniform(-cfg.gamma, cfg.gamma)))
        image = image.pow(gamma)
    return image


class EvalTransform:
    """Resize + pad only (deterministic)."""

    def __init__(self, image_size: int) -> None:
        self.image_size = int(image_size)

    def __call__(self, image: np.ndarray | torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        return resize_and_pad(to_tensor(image), self.image_size)

    def load(self, path: str | Path, rng: np.random.Generator | None = None) -> torch.Tensor:
        return self(load_image(path), rng)


class TrainTransform(EvalTransform):
    """Resize + pad, random affine (zoom / rotation / translation), intensity jitter. Never a flip."""

    def __init__(self, image_size: int, augment: AugmentConfig | None = None) -> None:
        super().__init__(image_size)
        self.augment = augment or AugmentConfig()

    def __call__(self, image: np.ndarray | torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        if rng is None:
            raise ValueError("TrainTransform needs a seeded numpy Generator (the dataset derives one per sample)")
        x = resize_and_pad(to_tensor(image), self.image_size)
        x = apply_affine(x, affine_matrix(rng, self.augment))
        return jitter_intensity(x, rng, self.augment).contiguous()


def build_transform(image_size: int, train: bool, augment: bool = True) -> EvalTransform:
    """The pipeline for a split: augmented for training (when ``augment``), resize + pad otherwise."""
    return TrainTransform(image_size) if (train and augment) else EvalTransform(image_size)
