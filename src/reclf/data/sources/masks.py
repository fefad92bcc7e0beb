"""Segmentation targets as distributed: SIIM-ACR run-length encodings and RSNA bounding boxes.

SIIM's ``EncodedPixels`` is the *relative-offset* RLE of the Kaggle competition: pairs ``(gap, length)`` where each
gap counts pixels from the end of the previous run, over the image flattened **column-major** (the flat index runs
down the first column first). ``-1`` means "no pneumothorax". Several rows for one image are united.
"""

from __future__ import annotations

import json

import numpy as np

SIIM_SHAPE = (1024, 1024)


class MaskSpecError(ValueError):
    """An RLE string or box list that cannot describe a mask of the given image."""


def rle_runs(rle: str) -> tuple[np.ndarray, np.ndarray]:
    """``(absolute_starts, lengths)`` of a relative-offset RLE (flat, column-major indices).

    ``"-1"`` or an empty string gives empty arrays. Raises :class:`MaskSpecError` for text that is not an even
    number of non-negative integers.
    """
    text = str(rle).strip()
    if text in ("", "-1"):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    try:
        values = np.array(list(map(int, text.split())), dtype=np.int64)
    except ValueError as exc:
        raise MaskSpecError(f"RLE {text[:40]!r}... holds a value that is not an integer") from exc
    if values.size % 2:
        raise MaskSpecError(f"RLE has an odd number of values ({values.size}); it must be (gap, length) pairs")
    gaps, lengths = values[0::2], values[1::2]
    if (gaps < 0).any() or (lengths <= 0).any():
        raise MaskSpecError("RLE has a negative gap or a run length <= 0")
    starts = np.cumsum(gaps) + np.cumsum(lengths) - lengths
    return starts, lengths


def check_runs(starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int] = SIIM_SHAPE) -> None:
    """Raise :class:`MaskSpecError` unless every run lies inside an image of ``shape``."""
    if starts.size and int(starts[-1] + lengths[-1]) > shape[0] * shape[1]:
        raise MaskSpecError(
            f"RLE runs end at pixel {int(starts[-1] + lengths[-1])}, beyond the {shape[0]}x{shape[1]} image"
        )


def rle_decode(rle: str, shape: tuple[int, int] = SIIM_SHAPE) -> np.ndarray:
    """Decode one SIIM RLE to a boolean ``shape`` mask (exactly: column-major, relative offsets)."""
    return runs_to_mask(*rle_runs(rle), shape)


def runs_to_mask(starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int] = SIIM_SHAPE) -> np.ndarray:
    """Boolean ``shape`` mask from absolute column-major runs (see :func:`rle_runs`)."""
    check_runs(starts, lengths, shape)
    flat = np.zeros(shape[0] * shape[1], dtype=bool)
    # Vectorised: pixel k of the concatenated runs lies at k + (start of its run - pixels in earlier runs).
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    flat[np.arange(offsets.size) + offsets] = True
    # Column-major: the flat index walks down columns, so reshape as (W, H) and transpose.
    return flat.reshape(shape[1], shape[0]).T


def rle_encode(mask: np.ndarray) -> str:
    """Inverse of :func:`rle_decode` (used by tests and synthetic trees)."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    if not flat.any():
        return "-1"
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    lengths = ends - starts
    prev_end = np.concatenate([[0], ends[:-1]])
    gaps = starts - prev_end
    return " ".join(f"{g} {n}" for g, n in zip(gaps.tolist(), lengths.tolist()))


def boxes_to_mask(boxes: list[list[float]], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise ``[x, y, width, height]`` boxes (pixels, top-left origin) into a boolean mask, clipped to the image."""
    mask = np.zeros(shape, dtype=bool)
    h, w = shape
    for box in boxes:
        x, y, bw, bh = (float(v) for v in box)
        x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
        x1, y1 = min(w, int(np.ceil(x + bw))), min(h, int(np.ceil(y + bh)))
        if x1 > x0 and y1 > y0:
            mask[y0:y1, x0:x1] = True
    return mask


def mask_from_spec(spec: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode the JSON mask spec an adapter stores for the cache workers.

    ``{"rle": ["..", ".."], "shape": [H, W]}`` (SIIM; the RLE is decoded on its declared shape and must match the
    image) or ``{"boxes": [[x, y, w, h], ...]}`` (RSNA; drawn on the image's own shape).
    """
    obj = json.loads(spec)
    if "rle" in obj:
        rle_shape = tuple(obj.get("shape", SIIM_SHAPE))
        if rle_shape != tuple(shape):
            raise MaskSpecError(f"the RLE is for a {rle_shape} image but the image is {tuple(shape)}")
        mask = np.zeros(shape, dtype=bool)
        for rle in obj["rle"]:
            mask |= rle_decode(rle, shape)
        return mask
    if "boxes" in obj:
        return boxes_to_mask(obj["boxes"], shape)
    raise MaskSpecError(f"unknown mask spec {spec[:60]!r}")
