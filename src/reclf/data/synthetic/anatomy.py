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
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy.ndimage import correlate1d

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
        texture_seed=int(patient["texture_seed"]),
    )


def with_cardiomegaly(anat: Anatomy, severity: str) -> Anatomy:
    """The same patient with an enlarged heart of ``severity``."""
    return replace(anat, ctr=CTR_BY_SEVERITY[severity])


#: A rectangle of pixels as (row slice, column slice); ``array[box]`` is its crop.
Box = tuple[slice, slice]
FULL: Box = (slice(None), slice(None))


@dataclass
class Grid:
    """Pixel centres of a ``size`` x ``size`` image in both frames (float32, shared read-only)."""

    size: int
    x: np.ndarray  # image frame
    y: np.ndarray
    px: np.ndarray  # patient frame
    py: np.ndarray
    theta: float = 0.0

    def box(self, x0: float, x1: float, y0: float, y1: float) -> Box:
        """Pixels whose centres may lie in the PATIENT-frame rectangle ``[x0, x1] x [y0, y1]``.

        The rectangle's corners are mapped to the image frame and rounded outwards with a one-pixel
        margin, so a shape known to lie in the rectangle lies in the crop; clipped to the image.
        """
        ct, st = math.cos(self.theta), math.sin(self.theta)
        xs, ys = [], []
        for px in (x0, x1):
            for py in (y0, y1):
                dx, dy = px - 0.5, py - 0.5
                xs.append(0.5 + ct * dx - st * dy)
                ys.append(0.5 + st * dx + ct * dy)
        s = self.size
        c0, c1 = max(0, math.floor(min(xs) * s) - 1), min(s, math.ceil(max(xs) * s) + 1)
        r0, r1 = max(0, math.floor(min(ys) * s) - 1), min(s, math.ceil(max(ys) * s) + 1)
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


@lru_cache(maxsize=8)
def _centred_coords(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-size constants: pixel-centre offsets from the image centre (row and column vectors) and x, y."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = np.meshgrid(c, c)
    x.flags.writeable = y.flags.writeable = False
    d = c - np.float32(0.5)
    return d[None, :], d[:, None], x, y


def make_grid(size: int, theta: float) -> Grid:
    dx, dy, x, y = _centred_coords(size)
    ct, st = math.cos(theta), math.sin(theta)
    px = (ct * dx + 0.5) + st * dy  # == to_patient(x, y, theta) with broadcasting
    py = (ct * dy + 0.5) - st * dx
    return Grid(size, x, y, px.astype(np.float32, copy=False), py.astype(np.float32, copy=False), theta)


def to_patient(x, y, theta: float):
    """Image frame -> patient frame (rotation about the image centre)."""
    ct, st = math.cos(theta), math.sin(theta)
    dx, dy = x - 0.5, y - 0.5
    return 0.5 + ct * dx + st * dy, 0.5 - st * dx + ct * dy


def to_image(px, py, theta: float):
    """Patient frame -> image frame (inverse of :func:`to_patient`)."""
    return to_patient(px, py, -theta)


def lung_shape(anat: Anatomy, side: str, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """One lung's outline (before the heart is cut out): apex dome, chest wall, diaphragm dome.

    The outline lies in ``sigma(side) * (px - cx)`` in ``(0, 0.96 tw)``, ``py`` in ``(y_apex, y_cp)``.
    """
    u = sigma(side) * (px - anat.cx)
    tw = anat.tw
    y_dome, y_cp = anat.dome(side), anat.y_cp
    t = np.clip((py - anat.y_apex) * (1.0 / (y_cp - anat.y_apex)), 0.0, 1.0)
    lateral = tw * (0.80 + 0.16 * t)
    ua = 0.5 * tw
    s = np.sqrt(np.clip((py - anat.y_apex) * (1.0 / 0.13), 0.0, 1.0))
    medial = anat.med_w + 0.02 * (1.0 - t)
    ud, lb = 0.5 * tw, 0.96 * tw
    q = (u - ud) * (1.0 / (lb - ud))
    w = np.where(u > ud, np.float32(y_cp - y_dome), np.float32(0.45 * (y_cp - y_dome)))
    dome = y_dome + w * q * q
    return (
        (py > anat.y_apex)
        & (u > np.maximum(medial, ua - (ua - medial) * s))
        & (u < np.minimum(lateral, ua + (lateral - ua) * s))
        & (py < dome)
    )


def heart_mask(anat: Anatomy, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    hx, hy, hw, hh = anat.heart_geometry()
    a, b = (px - hx) * (1.0 / hw), (py - hy) * (1.0 / hh)
    return a * a + b * b < 1.0


def mediastinum_mask(anat: Anatomy, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Mediastinum band plus the aortic knob on the patient's left."""
    band = (np.abs(px - anat.cx) < anat.med_w) & (py < anat.y_dome_left)
    knob_y = anat.y_apex + 0.16
    a, b = (px - (anat.cx + anat.med_w + 0.005)) * (1.0 / 0.03), (py - knob_y) * (1.0 / 0.03)
    return band | (a * a + b * b < 1.0)


def thorax_mask(anat: Anatomy, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Inside the chest wall, from just above the apices to just below the costophrenic angles."""
    return (np.abs(px - anat.cx) < 0.98 * anat.tw) & (py > anat.y_apex - 0.05) & (py < anat.y_cp + 0.03)


def lung_mask(anat: Anatomy, side: str, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Aerated lung of one side: its outline minus heart and mediastinum."""
    return lung_shape(anat, side, px, py) & ~heart_mask(anat, px, py) & ~mediastinum_mask(anat, px, py)


@lru_cache(maxsize=32)
def _bicubic_weights(size: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-size constants of PIL's bicubic ``cells`` -> ``size`` resampling along one axis.

    Resizing the identity tells us PIL's weights exactly: the dense [size, cells] matrix ``W``
    (a 2-D resize is ``W @ small @ W.T``) and, per output pixel, its (at most 4) source cells
    ``taps`` and their ``tap_weights``.
    """
    eye = Image.fromarray(np.eye(cells, dtype=np.float32), mode="F")
    dense = np.ascontiguousarray(np.asarray(eye.resize((size, cells), Image.Resampling.BICUBIC), dtype=np.float32).T)
    n = max(1, int((dense != 0).sum(axis=1).max()))
    taps = np.argsort(dense == 0, axis=1, kind="stable")[:, :n]
    tap_weights = np.take_along_axis(dense, taps, axis=1)
    for a in (dense, taps, tap_weights):
        a.flags.writeable = False
    return dense, taps, tap_weights


def upsample(small: np.ndarray, size: int, box: Box = FULL) -> np.ndarray:
    """``small`` (cells x cells) resized bicubically to ``size`` x ``size`` (as PIL does), cropped to ``box``.

    Only the crop is computed: a small product for the columns, then a 4-tap gather for the rows.
    ``einsum`` and gathers do not use BLAS, so the result does not depend on BLAS threads.
    """
    dense, taps, tap_weights = _bicubic_weights(size, small.shape[0])
    h = np.einsum("ij,kj->ik", small, dense[box[1]])  # [cells, crop columns]
    rows, weights = taps[box[0]], tap_weights[box[0]]
    out = h[rows[:, 0]]
    out *= weights[:, 0, None]
    for t in range(1, rows.shape[1]):
        term = h[rows[:, t]]
        term *= weights[:, t, None]
        out += term
    return out


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random texture in [0, 1]: a ``cells`` x ``cells`` grid upsampled bicubically."""
    return np.clip(upsample(rng.random((cells, cells), dtype=np.float32), size), 0.0, 1.0)


def _segment_distance(px, py, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    ax, ay = a
    bx, by = b
    vx, vy = bx - ax, by - ay
    rx, ry = px - ax, py - ay
    t = np.clip((rx * vx + ry * vy) * (1.0 / (vx * vx + vy * vy)), 0.0, 1.0)
    ex, ey = rx - t * vx, ry - t * vy
    return np.sqrt(ex * ex + ey * ey)


@dataclass
class AnatomyLayers:
    """Density map of the normal chest plus the masks findings need."""

    density: np.ndarray  # float32 [S, S]
    vessels: np.ndarray  # the vascular-marking part of density (a pneumothorax removes it)
    lungs: dict[str, np.ndarray]  # side -> bool mask
    heart: np.ndarray
    thorax: np.ndarray
    body: np.ndarray
    lung_boxes: dict[str, Box] = field(default_factory=dict)  # side -> crop holding that lung


def render_anatomy(anat: Anatomy, grid: Grid) -> AnatomyLayers:
    """The normal chest as a density map (vectorised; no per-pixel Python).

    Each structure is evaluated only inside its bounding box (``Grid.box``), so the cost follows
    the area of the structures rather than (number of structures) x (image area).
    """
    px, py, size = grid.px, grid.py, grid.size
    f32 = np.float32
    cx, tw, ya, ycp = float(anat.cx), float(anat.tw), float(anat.y_apex), float(anat.y_cp)
    tex_rng = np.random.default_rng(anat.texture_seed)
    dx = np.abs(px - cx)
    u_norm = dx * (1.0 / tw)

    # Soft tissue body with shoulders and neck.
    neck, shoulders = 0.09, tw * 1.3
    ramp = np.clip((py - (ya - 0.11)) * (1.0 / 0.09), 0.0, 1.0)
    body_w = neck + (shoulders - neck) * ramp * ramp * (3 - 2 * ramp)
    body = dx < np.minimum(body_w, tw * 1.3 - 0.04 * np.clip(py - 0.6, 0, 1))
    density = body * f32(0.85)

    hx, hy, hw, hh = anat.heart_geometry()
    heart = np.zeros((size, size), dtype=bool)
    box = grid.box(hx - hw, hx + hw, hy - hh, hy + hh)
    heart[box] = heart_mask(anat, px[box], py[box])
    med = np.zeros((size, size), dtype=bool)
    box = grid.box(cx - anat.med_w, cx + anat.med_w + 0.035, -1.0, anat.y_dome_left)
    med[box] = mediastinum_mask(anat, px[box], py[box])

    # Aerated lung, darker at the periphery; vascular markings densest at the hila.
    fine, coarse = tex_rng.random((24, 24), dtype=f32), tex_rng.random((10, 10), dtype=f32)
    lungs: dict[str, np.ndarray] = {}
    boxes: dict[str, Box] = {}
    vessels = np.zeros((size, size), dtype=f32)
    for side in ("right", "left"):
        edge = cx + sigma(side) * tw
        box = boxes[side] = grid.box(min(cx, edge), max(cx, edge), ya, ycp)
        lung = np.zeros((size, size), dtype=bool)
        lung[box] = lung_shape(anat, side, px[box], py[box]) & ~heart[box] & ~med[box]
        lungs[side] = lung
        lx, ly = anat.hilum(side)
        ex, ey = px[box] - lx, (py[box] - ly) * 0.8
        tex = np.clip(upsample(fine, size, box), 0.0, 1.0) * f32(0.6)  # == smooth_noise(.., 24) * 0.6
        tex += np.clip(upsample(coarse, size, box), 0.0, 1.0) * f32(0.4)
        v = lung[box] * ((np.exp(np.sqrt(ex * ex + ey * ey) * -10.0) * 0.24 + 0.05) * tex)
        vessels[box] += v
        density[box] += lung[box] * (0.06 * np.clip(1.0 - u_norm[box], 0.0, 1.0) - 0.62) + v

    # Heart and mediastinum denser than soft tissue, merging into the abdomen below the domes;
    # the trachea is an air column down to the carina.
    cardiac = (heart | med) & body
    box = grid.box(-1.0, 2.0, min(anat.y_dome_right, anat.y_dome_left) - 0.01, 2.0)  # where `below` > 0
    dome_y = np.where(px[box] < cx, f32(anat.y_dome_right), f32(anat.y_dome_left))
    soft = ~(lungs["right"][box] | lungs["left"][box]) & body[box] & (u_norm[box] < 0.99)
    below = np.clip((py[box] - dome_y + 0.01) * 20.0, 0.0, 1.0) * soft
    cardiac[box] &= below == 0
    density += cardiac * f32(0.22)
    density[box] += 0.2 * below
    tr_w = 0.017 * tw / 0.35
    box = grid.box(cx - tr_w, cx + tr_w, -1.0, ya + 0.2)
    density[box] -= 0.3 * ((dx[box] < tr_w) & (py[box] < ya + 0.2) & body[box])

    # Spine (vertebral bodies), ribs, clavicles.
    spine_w = 0.028 * tw / 0.35
    box = grid.box(cx - spine_w, cx + spine_w, -1.0, 2.0)
    vert = 0.75 + 0.25 * np.cos((py[box] - ya) * (2 * np.pi / 0.045))
    density[box] += ((dx[box] < spine_w) & body[box]) * (0.16 * vert)
    box = grid.box(cx - 1.02 * tw, cx + 1.02 * tw, ya - 0.04, ycp + 0.01)
    u, y = u_norm[box], py[box]
    chest = (u < 1.02) & (y > ya - 0.04) & (y < ycp + 0.01)
    spacing = (ycp - ya) / 8.5
    v_post = y - 0.12 * u * u + 0.06 * u
    rib_post = np.clip((np.cos(v_post * (2 * np.pi / spacing) - 2 * np.pi * anat.rib_phase) - 0.45) / 0.35, 0.0, 1.0)
    v_ant = y + 0.10 * u
    rib_ant = np.clip(
        (np.cos(v_ant * (2 * np.pi / (spacing * 1.1)) - 2 * np.pi * anat.rib_phase * 0.7) - 0.6) / 0.3, 0, 1
    )
    lateral_fade = np.clip((u - 0.06) * 10.0, 0.0, 1.0)
    density[box] += chest * lateral_fade * (0.10 * rib_post + 0.05 * rib_ant)
    for side in ("right", "left"):
        s = sigma(side)
        a = (cx + s * 0.05, anat.clav_y + 0.03)
        b = (cx + s * 0.95 * tw, anat.clav_y - 0.03)
        r = 0.02  # the clavicle is drawn where the distance to its axis is < 0.018
        box = grid.box(min(a[0], b[0]) - r, max(a[0], b[0]) + r, min(a[1], b[1]) - r, max(a[1], b[1]) + r)
        d = _segment_distance(px[box], py[box], a, b)
        density[box] += 0.3 * np.clip(1.5 - d * (1.0 / 0.012), 0.0, 1.0) * body[box]
    if anat.view == "AP":  # scapulae project over the lateral upper lungs
        box = grid.box(cx - tw, cx + tw, ya, ya + 0.26)
        u, y = u_norm[box], py[box]
        density[box] += 0.07 * ((u > 0.72) & (u < 1.0) & (y > ya) & (y < ya + 0.26))

    thorax = thorax_mask(anat, px, py)
    return AnatomyLayers(
        density=density.astype(f32, copy=False),
        vessels=vessels,
        lungs=lungs,
        heart=heart & (py < anat.y_dome_left + 0.02) & thorax,
        thorax=thorax,
        body=body,
        lung_boxes=boxes,
    )


def _gaussian_weights(sigma_px: float) -> np.ndarray:
    """The 1-D kernel ``scipy.ndimage.gaussian_filter`` uses (truncate 4)."""
    radius = int(4.0 * sigma_px + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 / (sigma_px * sigma_px) * x * x)
    return w / w.sum()


def expose(density: np.ndarray, anat: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Density -> brightness in [0, 1] (bright = dense): exposure curve, gamma, noise, blur."""
    size = density.shape[0]
    k = float(anat.exposure)
    img = np.maximum(density, 0.0) * -k
    np.exp(img, out=img)
    img = (1.0 - img) * (1.0 / (1.0 - math.exp(-k * 1.3)))
    np.clip(img, 1e-12, 1.0, out=img)  # then img ** gamma as exp(gamma * log(img)): twice as fast as power
    np.log(img, out=img)
    img *= np.float32(anat.gamma)
    np.exp(img, out=img)
    img *= np.float32(anat.contrast)
    img += np.float32(anat.brightness)
    img += np.float32(anat.noise) * rng.standard_normal(img.shape, dtype=np.float32)
    weights = _gaussian_weights(anat.blur_px128 * size / 128.0)  # == gaussian_filter(img, sigma, mode="nearest")
    img = correlate1d(img, weights, axis=0, mode="nearest")
    img = correlate1d(img, weights, axis=1, mode="nearest")
    return np.clip(img, 0.0, 1.0, out=img)
