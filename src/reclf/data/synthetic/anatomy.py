"""A procedural frontal chest: thorax, lungs, heart, mediastinum, diaphragm, ribs, clavicles, spine.

Everything is an analytic shape on a normalised grid, so a mask is exact and any size renders
the same patient. Two frames are used:

* the IMAGE frame: ``x`` (left -> right of the image) and ``y`` (top -> bottom) in ``[0, 1]``;
* the PATIENT frame: the image frame rotated by the patient's small rotation ``theta`` about the
  image centre. Shapes are defined in the patient frame, upright and centred on ``cx``.

Radiology convention: the patient's RIGHT lung is on the image's LEFT (``x < cx``); we write
``sigma(side)`` for the sign of a side in image ``x`` (right -> -1, left -> +1).

The image is a density map (soft tissue ~1, aerated lung ~0.3, bone adds) turned into
brightness by an exposure curve, so findings add density where they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

#: Normal cardiothoracic ratio range; cardiomegaly sets it from :data:`CTR_BY_SEVERITY`.
CTR_NORMAL = (0.38, 0.46)
CTR_BY_SEVERITY = {"mild": 0.54, "moderate": 0.60, "severe": 0.66}
AP_MAGNIFICATION = 1.06


def sigma(side: str) -> float:
    """Image-x sign of a patient side (patient right is image left)."""
    if side == "right":
        return -1.0
    if side == "left":
        return 1.0
    raise ValueError(f"side must be 'left' or 'right', got {side!r}")


@dataclass(frozen=True)
class Anatomy:
    """One patient at one study: geometry in the patient frame, plus acquisition settings."""

    cx: float  # midline
    tw: float  # thorax half-width
    y_apex: float  # lung apices
    y_dome_right: float  # top of the right hemidiaphragm dome
    y_dome_left: float  # left dome (usually a little lower)
    cp_drop: float  # costophrenic recess depth below the dome
    ctr: float  # cardiothoracic ratio
    med_w: float  # mediastinum half-width
    theta: float  # rotation (radians)
    rib_phase: float
    clav_y: float
    exposure: float  # k in 1 - exp(-k D)
    gamma: float
    contrast: float
    brightness: float
    noise: float
    blur_px128: float  # detector blur, in pixels of a 128-px image
    view: str  # "PA" or "AP"
    texture_seed: int

    @property
    def y_cp(self) -> float:
        return max(self.y_dome_right, self.y_dome_left) + self.cp_drop

    @property
    def low_volumes(self) -> bool:
        return min(self.y_dome_right, self.y_dome_left) - self.y_apex < 0.47

    def dome(self, side: str) -> float:
        return self.y_dome_right if side == "right" else self.y_dome_left

    def hilum(self, side: str) -> tuple[float, float]:
        """Patient-frame (x, y) of the hilum of a lung."""
        y = self.y_apex + 0.42 * (self.dome(side) - self.y_apex)
        return self.cx + sigma(side) * (self.med_w + 0.12 * self.tw), y

    def zone_range(self, side: str, zone: str) -> tuple[float, float]:
        """Vertical extent (y0, y1) of a lung zone (thirds between apex and dome)."""
        top, bottom = self.y_apex, self.dome(side) + 0.02
        h = (bottom - top) / 3.0
        i = {"upper": 0, "middle": 1, "lower": 2}[zone]
        return top + i * h, top + (i + 1) * h

    def heart_geometry(self) -> tuple[float, float, float, float]:
        """Heart ellipse (hx, hy, half-width, half-height); shifted to the patient's left."""
        hw = self.ctr * self.tw * (AP_MAGNIFICATION if self.view == "AP" else 1.0)
        hh = 0.12 + 0.15 * (self.ctr - 0.42)
        hx = self.cx + 0.25 * hw  # patient's left = image right
        hy = self.y_dome_left - 0.05
        return hx, hy, hw, hh


def sample_patient(rng: np.random.Generator) -> dict[str, float]:
    """Body habitus of a patient: kept across that patient's studies."""
    scale = rng.uniform(0.9, 1.05)
    return {
        "tw": 0.35 * scale,
        "y_apex": rng.uniform(0.10, 0.14),
        "ctr": rng.uniform(*CTR_NORMAL),
        "med_w": rng.uniform(0.055, 0.07) * scale,
        "dome_gap": rng.uniform(0.005, 0.03),
        "cp_drop": rng.uniform(0.06, 0.09),
        "texture_seed": int(rng.integers(0, 2**31 - 1)),
    }


def sample_anatomy(patient: dict[str, float], rng: np.random.Generator, view: str) -> Anatomy:
    """One study of ``patient``: position, rotation, inspiration and exposure vary per study."""
    inspiration = rng.uniform(0.0, 1.0) if view == "PA" else rng.uniform(-0.4, 0.7)
    y_dome_right = patient["y_apex"] + 0.46 + 0.12 * inspiration
    return Anatomy(
        cx=0.5 + rng.normal(0.0, 0.012),
        tw=patient["tw"],
        y_apex=patient["y_apex"] + rng.normal(0.0, 0.008),
        y_dome_right=y_dome_right,
        y_dome_left=y_dome_right + patient["dome_gap"],
        cp_drop=patient["cp_drop"],
        ctr=patient["ctr"],
        med_w=patient["med_w"],
        theta=math.radians(rng.uniform(-3.0, 3.0)),
        rib_phase=rng.uniform(0.0, 1.0),
        clav_y=patient["y_apex"] + rng.uniform(0.0, 0.03),
        exposure=rng.uniform(0.9, 1.4),
        gamma=rng.uniform(0.8, 1.25),
        contrast=rng.uniform(0.85, 1.05),
        brightness=rng.uniform(-0.03, 0.05),
        noise=rng.uniform(0.008, 0.025) * (1.5 if view == "AP" else 1.0),
        blur_px128=rng.uniform(0.35, 0.8),
        view=view,
        texture_seed=patient["texture_seed"],
    )


def with_cardiomegaly(anat: Anatomy, severity: str) -> Anatomy:
    """The same patient with an enlarged heart of ``severity``."""
    return replace(anat, ctr=CTR_BY_SEVERITY[severity])


@dataclass
class Grid:
    """Pixel centres of a ``size`` x ``size`` image in both frames."""

    size: int
    x: np.ndarray  # image frame
    y: np.ndarray
    px: np.ndarray  # patient frame
    py: np.ndarray


def make_grid(size: int, theta: float) -> Grid:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = np.meshgrid(c, c)
    px, py = to_patient(x, y, theta)
    return Grid(size, x, y, px.astype(np.float32), py.astype(np.float32))


def to_patient(x, y, theta: float):
    """Image frame -> patient frame (rotation about the image centre)."""
    ct, st = math.cos(theta), math.sin(theta)
    dx, dy = x - 0.5, y - 0.5
    return 0.5 + ct * dx + st * dy, 0.5 - st * dx + ct * dy


def to_image(px, py, theta: float):
    """Patient frame -> image frame (inverse of :func:`to_patient`)."""
    return to_patient(px, py, -theta)


def lung_shape(anat: Anatomy, side: str, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """One lung's outline (before the heart is cut out): apex dome, chest wall, diaphragm dome."""
    u = sigma(side) * (px - anat.cx)
    tw = anat.tw
    y_dome, y_cp = anat.dome(side), anat.y_cp
    t = np.clip((py - anat.y_apex) / (y_cp - anat.y_apex), 0.0, 1.0)
    lateral = tw * (0.80 + 0.16 * t)
    ua = 0.5 * tw
    s = np.sqrt(np.clip((py - anat.y_apex) / 0.13, 0.0, 1.0))
    medial = anat.med_w + 0.02 * (1.0 - t)
    ud, lb = 0.5 * tw, 0.96 * tw
    w = np.where(u > ud, 1.0, 0.45)
    dome = y_dome + (y_cp - y_dome) * w * ((u - ud) / (lb - ud)) ** 2
    return (
        (py > anat.y_apex)
        & (u > np.maximum(medial, ua - (ua - medial) * s))
        & (u < np.minimum(lateral, ua + (lateral - ua) * s))
        & (py < dome)
    )


def heart_mask(anat: Anatomy, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    hx, hy, hw, hh = anat.heart_geometry()
    return ((px - hx) / hw) ** 2 + ((py - hy) / hh) ** 2 < 1.0


def mediastinum_mask(anat: Anatomy, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Mediastinum band plus the aortic knob on the patient's left."""
    band = (np.abs(px - anat.cx) < anat.med_w) & (py < anat.y_dome_left)
    knob_y = anat.y_apex + 0.16
    knob = ((px - (anat.cx + anat.med_w + 0.005)) / 0.03) ** 2 + ((py - knob_y) / 0.03) ** 2 < 1.0
    return band | knob


def thorax_mask(anat: Anatomy, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Inside the chest wall, from just above the apices to just below the costophrenic angles."""
    return (np.abs(px - anat.cx) < 0.98 * anat.tw) & (py > anat.y_apex - 0.05) & (py < anat.y_cp + 0.03)


def lung_mask(anat: Anatomy, side: str, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Aerated lung of one side: its outline minus heart and mediastinum."""
    return lung_shape(anat, side, px, py) & ~heart_mask(anat, px, py) & ~mediastinum_mask(anat, px, py)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random texture in [0, 1]: a ``cells`` x ``cells`` grid upsampled bicubically."""
    small = rng.random((cells, cells), dtype=np.float32)
    img = Image.fromarray(small, mode="F").resize((size, size), Image.BICUBIC)
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)


def _segment_distance(px, py, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    ax, ay = a
    bx, by = b
    vx, vy = bx - ax, by - ay
    t = np.clip(((px - ax) * vx + (py - ay) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    return np.hypot(px - (ax + t * vx), py - (ay + t * vy))


@dataclass
class AnatomyLayers:
    """Density map of the normal chest plus the masks findings need."""

    density: np.ndarray  # float32 [S, S]
    vessels: np.ndarray  # the vascular-marking part of density (a pneumothorax removes it)
    lungs: dict[str, np.ndarray]  # side -> bool mask
    heart: np.ndarray
    thorax: np.ndarray
    body: np.ndarray


def render_anatomy(anat: Anatomy, grid: Grid) -> AnatomyLayers:
    """The normal chest as a density map (vectorised; no per-pixel Python)."""
    px, py, size = grid.px, grid.py, grid.size
    tex_rng = np.random.default_rng(anat.texture_seed)
    dx = np.abs(px - anat.cx)
    u_norm = dx / anat.tw

    # Soft tissue body with shoulders and neck.
    neck, shoulders = 0.09, anat.tw * 1.3
    ramp = np.clip((py - (anat.y_apex - 0.11)) / 0.09, 0.0, 1.0)
    body_w = neck + (shoulders - neck) * ramp * ramp * (3 - 2 * ramp)
    body = dx < np.minimum(body_w, anat.tw * 1.3 - 0.04 * np.clip(py - 0.6, 0, 1))
    density = 0.85 * body.astype(np.float32)

    heart = heart_mask(anat, px, py)
    med = mediastinum_mask(anat, px, py)
    lungs = {side: lung_shape(anat, side, px, py) & ~heart & ~med for side in ("right", "left")}
    lung_any = lungs["right"] | lungs["left"]

    # Aerated lung, darker at the periphery; vascular markings densest at the hila.
    density -= 0.62 * lung_any
    density += 0.06 * lung_any * np.clip(1.0 - u_norm, 0.0, 1.0)
    tex = smooth_noise(tex_rng, size, 24) * 0.6 + smooth_noise(tex_rng, size, 10) * 0.4
    vessels = np.zeros_like(density)
    for side in ("right", "left"):
        hx, hy = anat.hilum(side)
        d = np.hypot(px - hx, (py - hy) * 0.8)
        vessels += lungs[side] * (0.05 + 0.24 * np.exp(-d / 0.1)) * tex
    density += vessels

    # Heart and mediastinum denser than soft tissue, merging into the abdomen below the domes;
    # the trachea is an air column down to the carina.
    dome_y = np.where(px < anat.cx, anat.y_dome_right, anat.y_dome_left)
    below = np.clip((py - dome_y + 0.01) / 0.05, 0.0, 1.0) * (~lung_any & body & (u_norm < 0.99))
    density += 0.22 * ((heart | med) & (below == 0)) * body + 0.2 * below
    trachea = (dx < 0.017 * anat.tw / 0.35) & (py < anat.y_apex + 0.2) & body
    density -= 0.3 * trachea

    # Spine (vertebral bodies), ribs, clavicles.
    spine_w = 0.028 * anat.tw / 0.35
    vert = 0.75 + 0.25 * np.cos(2 * np.pi * (py - anat.y_apex) / 0.045)
    density += 0.16 * (dx < spine_w) * vert * body
    chest = (u_norm < 1.02) & (py > anat.y_apex - 0.04) & (py < anat.y_cp + 0.01)
    spacing = (anat.y_cp - anat.y_apex) / 8.5
    v_post = py - 0.12 * u_norm**2 + 0.06 * u_norm
    rib_post = np.clip((np.cos(2 * np.pi * (v_post / spacing - anat.rib_phase)) - 0.45) / 0.35, 0.0, 1.0)
    v_ant = py + 0.10 * u_norm
    rib_ant = np.clip((np.cos(2 * np.pi * (v_ant / (spacing * 1.1) - anat.rib_phase * 0.7)) - 0.6) / 0.3, 0, 1)
    lateral_fade = np.clip((u_norm - 0.06) / 0.1, 0.0, 1.0)
    density += chest * lateral_fade * (0.10 * rib_post + 0.05 * rib_ant)
    for side in ("right", "left"):
        s = sigma(side)
        a = (anat.cx + s * 0.05, anat.clav_y + 0.03)
        b = (anat.cx + s * 0.95 * anat.tw, anat.clav_y - 0.03)
        d = _segment_distance(px, py, a, b)
        density += 0.3 * np.clip(1.5 - d / 0.012, 0.0, 1.0) * body
    if anat.view == "AP":  # scapulae project over the lateral upper lungs
        scap = (u_norm > 0.72) & (u_norm < 1.0) & (py > anat.y_apex) & (py < anat.y_apex + 0.26)
        density += 0.07 * scap

    return AnatomyLayers(
        density=density.astype(np.float32),
        vessels=vessels.astype(np.float32),
        lungs=lungs,
        heart=heart & (py < anat.y_dome_left + 0.02) & thorax_mask(anat, px, py),
        thorax=thorax_mask(anat, px, py),
        body=body,
    )


def expose(density: np.ndarray, anat: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Density -> brightness in [0, 1] (bright = dense): exposure curve, gamma, noise, blur."""
    size = density.shape[0]
    k = anat.exposure
    img = (1.0 - np.exp(-k * np.clip(density, 0.0, None))) / (1.0 - math.exp(-k * 1.3))
    img = np.clip(img, 0.0, 1.0) ** anat.gamma
    img = anat.contrast * img + anat.brightness
    img = img + np.float32(anat.noise) * rng.standard_normal(img.shape, dtype=np.float32)
    img = gaussian_filter(img, sigma=anat.blur_px128 * size / 128.0, mode="nearest")
    return np.clip(img, 0.0, 1.0).astype(np.float32)
