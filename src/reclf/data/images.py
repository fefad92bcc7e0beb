"""Reading radiographs from disk: PNG / JPEG (8 or 16 bit) and DICOM, to one float format.

Every reader returns a 2-D ``float32`` array in ``[0, 1]`` where bright means dense (bone white),
whatever the file's photometric interpretation. DICOM is handled as radiologists see it:
modality LUT (rescale slope/intercept), VOI LUT or window centre/width, MONOCHROME1 inverted.
A file that cannot be read raises :class:`ImageReadError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

DICOM_SUFFIXES = {".dcm", ".dicom"}


class ImageReadError(OSError):
    """An image file that is missing, truncated or not an image."""


def load_image(path: str | Path) -> np.ndarray:
    """Read ``path`` as a ``float32`` ``[H, W]`` array in ``[0, 1]``."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file {path} does not exist")
    if path.suffix.lower() in DICOM_SUFFIXES:
        return load_dicom(path)
    try:
        with Image.open(path) as img:
            img.load()
            return pil_to_float(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


def pil_to_float(img: Image.Image) -> np.ndarray:
    """Any PIL image (L, I;16, I, RGB, ...) to grayscale float32 in [0, 1]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return np.clip(arr / hi, 0.0, 1.0)
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.float32) / 255.0


def load_dicom(path: str | Path) -> np.ndarray:
    """Read a DICOM radiograph with modality and VOI LUTs applied, MONOCHROME1 inverted."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except (InvalidDicomError, AttributeError, ValueError, OSError, KeyError) as exc:
        raise ImageReadError(f"cannot read DICOM {path}: {exc}") from exc
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):  # colour secondary capture
        pixels = pixels[..., :3].mean(axis=-1)
    elif pixels.ndim != 2:
        raise ImageReadError(f"DICOM {path} has pixel data of shape {pixels.shape}; expected one 2-D frame")
    arr = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    if has_voi:
        arr = np.asarray(apply_voi_lut(arr, ds, index=0), dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        arr = 1.0 - arr
    return arr.astype(np.float32)


def float_to_uint8(arr: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def resize_short_side(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize so the short side is ``size`` (aspect kept), with antialiasing."""
    h, w = arr.shape
    scale = size / min(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray(arr.astype(np.float32), mode="F")
    return np.asarray(img.resize(new, Image.Resampling.BILINEAR, reducing_gap=2.0), dtype=np.float32)


def pad_to_square(arr: np.ndarray, value: float = 0.0) -> np.ndarray:
    """Pad the short side symmetrically so the image is square (keeps anatomy unscaled)."""
    h, w = arr.shape
    n = max(h, w)
    out = np.full((n, n), value, dtype=arr.dtype)
    top, left = (n - h) // 2, (n - w) // 2
    out[top : top + h, left : left + w] = arr
    return out
