"""Findings: what each looks like, where it goes, and its exact pixel mask.

Each renderer adds density to the chest's density map (see ``anatomy``) only inside the
finding's mask, so the mask is exactly the set of pixels the finding changed (before the
detector blur). Renderers work on the bounding-box crop of their shape (``Grid.box``), not on
the whole image. Locations follow the spec: ``side`` is the PATIENT's side (left = image right),
``zone`` the lung third (upper / middle / lower). Sizes are in normalised units with a floor of
about one pixel so that a finding never vanishes at 64 px.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from reclf.data.synthetic.anatomy import Anatomy, AnatomyLayers, Box, Grid, lung_mask, sigma, to_image, upsample
from reclf.data.synthetic.vocab import FINDINGS, SEVERITIES, SIDES, ZONES

CERTAINTIES = ("present", "uncertain")


@dataclass(frozen=True)
class FindingSpec:
    """One finding of a study: kind, the patient's side, lung zone, severity and certainty.

    ``certainty="uncertain"`` is rendered like ``"present"`` but the report hedges it (label -1).
    ``device`` names the support device kind (``vocab.DEVICE_KINDS``) for ``support_devices``.
    """

    finding: str
    side: str = "none"
    zone: str = "none"
    severity: str = "moderate"
    certainty: str = "present"
    device: str = ""

    def __post_init__(self) -> None:
        if self.finding not in FINDINGS:
            raise ValueError(f"unknown finding {self.finding!r}; known: {', '.join(FINDINGS)}")
        if self.side not in SIDES:
            raise ValueError(f"{self.finding}: side {self.side!r} is not one of {SIDES}")
        if self.zone not in ZONES:
            raise ValueError(f"{self.finding}: zone {self.zone!r} is not one of {ZONES}")
        if self.severity not in SEVERITIES + ("none",):
            raise ValueError(f"{self.finding}: severity {self.severity!r} is not one of {SEVERITIES}")
        if self.certainty not in CERTAINTIES:
            raise ValueError(f"{self.finding}: certainty {self.certainty!r} is not one of {CERTAINTIES}")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def sides(self) -> tuple[str, ...]:
        return ("right", "left") if self.side == "bilateral" else (self.side,)


def _min_size(grid: Grid, pixels: float = 1.2) -> float:
    return pixels / grid.size


def _place(
    anat: Anatomy,
    side: str,
    zone: str,
    rng: np.random.Generator,
    margin: float,
    fallback: tuple[Grid, AnatomyLayers] | None = None,
) -> tuple[float, float]:
    """A point inside ``side``'s lung within ``zone`` (falls back to the zone's centre line).

    ``fallback=(grid, layers)`` picks a pixel centre of the rendered lung instead (see
    :func:`_place_on_pixels`): slower, but the finding is then certain to cover at least that pixel.
    """
    if fallback is not None:
        return _place_on_pixels(anat, side, zone, rng, margin, *fallback)
    y0, y1 = anat.zone_range(side, zone)
    n = 24
    us = rng.uniform(0.25, 0.85, n) * anat.tw
    ys = rng.uniform(y0 + 0.25 * (y1 - y0), y1 - 0.25 * (y1 - y0), n)
    xs = anat.cx + sigma(side) * us
    offsets = np.array([(0, 0), (margin, 0), (-margin, 0), (0, margin), (0, -margin)], dtype=np.float64)
    ok = lung_mask(anat, side, xs + offsets[:, :1], ys + offsets[:, 1:]).all(axis=0)  # centre and 4 neighbours
    i = int(np.argmax(ok)) if ok.any() else 0
    return float(xs[i]), float(ys[i])


def _place_on_pixels(
    anat: Anatomy, side: str, zone: str, rng: np.random.Generator, margin: float, grid: Grid, layers: AnatomyLayers
) -> tuple[float, float]:
    """A pixel centre of ``side``'s rendered lung: in ``zone`` with room ``margin`` if any, else nearest the zone.

    Used when :func:`_place`'s 24 random candidates all missed the lung, which happens when an enlarged heart
    covers most of the left lower zone. A blob or band centred exactly on a lung pixel centre always covers
    that pixel, so the finding's mask cannot come out empty. Candidates are taken in raster order, so the
    choice is a pure function of ``rng``.
    """
    lung = layers.lungs[side] & layers.thorax
    if not lung.any():
        raise ValueError(f"the {side} lung has no pixel at {grid.size} px; cannot place a finding there")
    y0, y1 = anat.zone_range(side, zone)
    py = grid.py
    roomy = lung.copy()
    for dx, dy in ((margin, 0.0), (-margin, 0.0), (0.0, margin), (0.0, -margin)):
        roomy &= lung_mask(anat, side, grid.px + np.float32(dx), py + np.float32(dy))
    in_zone = (py >= y0) & (py < y1)
    for cand in (lung & roomy & in_zone, lung & in_zone):
        if cand.any():
            break
    else:  # no lung pixel in the zone at all: the lung pixels nearest to it
        dist = np.where(lung, np.maximum(y0 - py, py - y1), np.inf)
        cand = dist <= dist.min() + 0.5 / grid.size
    rows, cols = np.nonzero(cand)
    k = int(rng.integers(len(rows)))
    return float(grid.px[rows[k], cols[k]]), float(grid.py[rows[k], cols[k]])


#: Blob fields are only used where they exceed this (finding thresholds are 0.3 and 0.37).
BLOB_FLOOR = 0.3


def _blob(
    grid: Grid, cx: float, cy: float, r: float, rng: np.random.Generator, lobes: int, aspect: float = 1.0
) -> tuple[Box, np.ndarray]:
    """A lobulated smooth field (max 1 near the centre) made of a few Gaussians: ``(box, field in box)``.

    The box holds every pixel where the field exceeds :data:`BLOB_FLOOR`; outside it the field is 0.
    """
    lobe_params = []
    for k in range(lobes):
        ox, oy = (0.0, 0.0) if k == 0 else rng.normal(0.0, 0.45 * r, 2)
        rk = r * rng.uniform(0.6, 1.0)
        lobe_params.append((cx + float(ox), cy + float(oy), rk))
    reach = math.sqrt(-math.log(BLOB_FLOOR))  # exp(-q) > floor <=> q < reach ** 2
    box = grid.box(
        min(x - rk * aspect * reach for x, _, rk in lobe_params),
        max(x + rk * aspect * reach for x, _, rk in lobe_params),
        min(y - rk * reach for _, y, rk in lobe_params),
        max(y + rk * reach for _, y, rk in lobe_params),
    )
    px, py = grid.px[box], grid.py[box]
    field = np.zeros(np.shape(px))
    for x, y, rk in lobe_params:
        a, b = (px - x) * (1.0 / (rk * aspect)), (py - y) * (1.0 / rk)
        field = np.maximum(field, np.exp(-(a * a + b * b)))  # exp > 0: the same as starting from the first lobe
    return box, field


def _opacity(
    spec: FindingSpec, anat: Anatomy, grid: Grid, layers: AnatomyLayers, rng, fallback: bool = False
) -> np.ndarray:
    """Consolidation (dense, homogeneous), pneumonia (patchy) or a lung nodule/mass."""
    mask = np.zeros_like(grid.px, dtype=bool)
    for side in spec.sides():
        if spec.finding == "lung_lesion":
            r = {"mild": 0.016, "moderate": 0.027, "severe": 0.05}[spec.severity]
            r = max(r, _min_size(grid, 1.3))
            x, y = _place(anat, side, spec.zone, rng, r, (grid, layers) if fallback else None)
            box, field = _blob(grid, x, y, r, rng, 1 if spec.severity != "severe" else 3)
            m = (field > 0.37) & layers.lungs[side][box]
            layers.density[box] += m * (0.45 + 0.2 * field)
        else:
            r = {"mild": 0.04, "moderate": 0.058, "severe": 0.08}[spec.severity]
            x, y = _place(anat, side, spec.zone, rng, r * 0.5, (grid, layers) if fallback else None)
            box, field = _blob(grid, x, y, r, rng, 4, aspect=rng.uniform(1.0, 1.5))
            m = (field > 0.3) & layers.lungs[side][box]
            edge = np.clip((field - 0.3) * (1.0 / 0.35), 0.0, 1.0)
            if spec.finding == "consolidation":
                layers.density[box] += m * (0.5 * edge + 0.08)
            else:  # pneumonia: patchy, ill-defined
                patch = upsample(rng.random((12, 12), dtype=np.float32), grid.size, box)
                layers.density[box] += m * (0.08 + 0.34 * edge * np.clip(0.35 + patch, 0.0, 1.0))
        mask[box] |= m
    return mask


def _atelectasis(
    spec: FindingSpec, anat: Anatomy, grid: Grid, layers: AnatomyLayers, rng, fallback: bool = False
) -> np.ndarray:
    """Plate-like (mild), band (moderate) or lobar collapse wedge (severe)."""
    mask = np.zeros_like(grid.px, dtype=bool)
    rx, ry, amp = {"mild": (0.07, 0.008, 0.4), "moderate": (0.09, 0.022, 0.45), "severe": (0.11, 0.05, 0.55)}[
        spec.severity
    ]
    ry = max(ry, _min_size(grid, 1.0))
    for side in spec.sides():
        x, y = _place(anat, side, spec.zone, rng, ry, (grid, layers) if fallback else None)
        tilt = rng.uniform(-0.25, 0.25) * sigma(side)
        reach = math.hypot(rx, 1.4 * ry)  # |a| < rx and |b| < 1.4 ry inside the band or wedge
        box = grid.box(x - reach, x + reach, y - reach, y + reach)
        dx, dy = grid.px[box] - x, grid.py[box] - y
        ct, st = math.cos(tilt), math.sin(tilt)
        a = dx * ct + dy * st
        b = dy * ct - dx * st
        if spec.severity == "severe":  # wedge: wider towards the chest wall
            widen = np.clip(0.6 + (0.8 * sigma(side) / rx) * a, 0.3, 1.4)
            bn = b / (ry * widen)
        else:
            bn = b * (1.0 / ry)
        an = a * (1.0 / rx)
        m = (an * an + bn * bn < 1.0) & layers.lungs[side][box]
        layers.density[box] += m * amp
        mask[box] |= m
    return mask


def _edema(spec: FindingSpec, anat: Anatomy, grid: Grid, layers: AnatomyLayers, rng) -> np.ndarray:
    """Bilateral perihilar haze fading to the periphery, with interstitial texture."""
    reach, amp = {"mild": (0.10, 0.2), "moderate": (0.14, 0.28), "severe": (0.19, 0.36)}[spec.severity]
    small = rng.random((28, 28), dtype=np.float32)
    mask = np.zeros_like(grid.px, dtype=bool)
    radius = reach * math.log(1.0 / 0.3)  # f > 0 <=> d < radius
    for side in ("right", "left"):
        hx, hy = anat.hilum(side)
        box = grid.box(hx - radius, hx + radius, hy - radius / 0.75, hy + radius / 0.75)
        ex, ey = grid.px[box] - hx, (grid.py[box] - hy) * 0.75
        d = np.sqrt(ex * ex + ey * ey)
        f = np.clip((np.exp(d * (-1.0 / reach)) - 0.3) * (1.0 / 0.7), 0.0, 1.0)
        m = (f > 0) & layers.lungs[side][box]
        tex = upsample(small, grid.size, box)
        layers.density[box] += m * (amp * f * np.clip(0.6 + 0.6 * tex, 0.0, 1.2))
        mask[box] |= m
    return mask


def _effusion(spec: FindingSpec, anat: Anatomy, grid: Grid, layers: AnatomyLayers, rng) -> np.ndarray:
    """Dependent fluid with a meniscus rising to the chest wall; blunts the costophrenic angle."""
    mask = np.zeros_like(grid.px, dtype=bool)
    for side in spec.sides():
        y_dome = anat.dome(side)
        h = y_dome - anat.y_apex
        level = {
            "mild": anat.y_cp - 0.035,
            "moderate": y_dome - 0.05 - rng.uniform(0, 0.03),
            "severe": y_dome - 0.3 * h,
        }[spec.severity]
        box = layers.lung_boxes[side]  # the fluid lies in the lung
        py = grid.py[box]
        u = np.clip((grid.px[box] - anat.cx) * (sigma(side) / anat.tw), 0.0, 1.0)
        meniscus = level - 0.07 * u * u
        m = (py > meniscus) & layers.lungs[side][box]
        layers.density[box] += m * (
            0.55 * np.clip((py - meniscus) * (1.0 / 0.025), 0.25, 1.0) - 0.7 * layers.vessels[box]
        )
        mask[box] |= m
    return mask


def _pneumothorax(spec: FindingSpec, anat: Anatomy, grid: Grid, layers: AnatomyLayers, rng) -> np.ndarray:
    """Air between chest wall and a collapsed lung: no markings, plus a thin visceral pleural line."""
    side = spec.side
    f = {"mild": 0.88, "moderate": 0.76, "severe": 0.6}[spec.severity]
    ax, ay = anat.cx + sigma(side) * (anat.med_w + 0.02), anat.dome(side) - 0.03

    box = layers.lung_boxes[side]  # everything below lies in the lung
    px, py = grid.px[box], grid.py[box]

    def collapsed(scale: float) -> np.ndarray:
        return lung_mask(anat, side, ax + (px - ax) * (1.0 / scale), ay + (py - ay) * (1.0 / scale))

    lung = layers.lungs[side][box]
    inner = collapsed(f) & lung
    m = lung & ~inner
    rim = inner & ~collapsed(f * (1.0 - max(0.02, 1.5 / grid.size)))
    layers.density[box] += rim * 0.22 + inner * (0.1 * (1.0 - f)) - m * (layers.vessels[box] + 0.08)
    mask = np.zeros_like(layers.lungs[side])
    mask[box] = m
    return mask


def _device_path(spec: FindingSpec, anat: Anatomy) -> list[tuple[float, float]]:
    """Patient-frame polyline of a support device."""
    cx, tw, ya = anat.cx, anat.tw, anat.y_apex
    if spec.device == "endotracheal_tube":
        return [(cx, 0.0), (cx, ya + 0.05), (cx + 0.002, ya + 0.15)]
    if spec.device == "nasogastric_tube":
        yd = anat.y_dome_left
        return [(cx - 0.005, 0.0), (cx + 0.012, ya + 0.3), (cx + 0.03, yd + 0.02), (cx + 0.12, yd + 0.09)]
    s = sigma(spec.side)
    if spec.device == "central_line":
        return [(cx + s * 0.2 * tw, ya - 0.12), (cx + s * 0.12 * tw, ya + 0.02), (cx + 0.05 * s * tw, ya + 0.22)]
    # PICC: along the arm and subclavian vein into the SVC
    return [
        (cx + s * 1.25 * tw, ya + 0.08),
        (cx + s * 0.6 * tw, ya + 0.01),
        (cx + s * 0.15 * tw, ya + 0.06),
        (cx + 0.06 * s * tw, ya + 0.24),
    ]


def _device(spec: FindingSpec, anat: Anatomy, grid: Grid, layers: AnatomyLayers, rng) -> np.ndarray:
    path = _device_path(spec, anat)
    xs, ys = to_image(np.array([p[0] for p in path]), np.array([p[1] for p in path]), anat.theta)
    canvas = Image.new("L", (grid.size, grid.size), 0)
    width = max(1, int(round(grid.size * (0.012 if spec.device == "endotracheal_tube" else 0.007))))
    ImageDraw.Draw(canvas).line(
        [(float(x) * grid.size, float(y) * grid.size) for x, y in zip(xs, ys, strict=True)],
        fill=255,
        width=width,
        joint="curve",
    )
    line = np.asarray(canvas) > 0
    layers.density += line * 0.75
    return line


RENDERERS: dict[str, Callable[..., np.ndarray]] = {
    "atelectasis": _atelectasis,
    "consolidation": _opacity,
    "pneumonia": _opacity,
    "lung_lesion": _opacity,
    "edema": _edema,
    "pleural_effusion": _effusion,
    "pneumothorax": _pneumothorax,
    "support_devices": _device,
}


#: Renderers that place their finding with :func:`_place` (and so accept ``fallback``).
PLACED = ("atelectasis", "consolidation", "pneumonia", "lung_lesion")


def render_finding(
    spec: FindingSpec, anat: Anatomy, grid: Grid, layers: AnatomyLayers, rng, fallback: bool = False
) -> np.ndarray:
    """Add one finding to ``layers.density`` in place; return its mask (bool [S, S], inside the thorax).

    Cardiomegaly is part of the anatomy (see ``anatomy.with_cardiomegaly``); its mask is the heart.
    ``fallback``: place the finding on a pixel of the rendered lung (:func:`_place_on_pixels`), which
    guarantees a non-empty mask; the default sampling is kept otherwise so that outputs stay as they were.
    """
    if spec.finding == "cardiomegaly":
        mask = layers.heart.copy()
    elif spec.finding in PLACED:
        mask = RENDERERS[spec.finding](spec, anat, grid, layers, rng, fallback=fallback)
    else:
        mask = RENDERERS[spec.finding](spec, anat, grid, layers, rng)
    return mask & layers.thorax
