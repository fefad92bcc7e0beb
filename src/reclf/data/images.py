"""Reading radiographs from disk: PNG / JPEG (8 or 16 bit) and DICOM, to one float format.

Every reader returns a 2-D ``float32`` array in ``[0, 1]`` where bright means dense (bone white),
whatever the file's photometric interpretation. DICOM is handled as radiologists see it:
modality LUT (rescale slope/intercept), VOI LUT or window centre/width, MONOCHROME1 inverted.
A file that cannot be read raises :class:`ImageReadError` naming the file; so does a file that declares
more than ``max_pixels`` pixels (a decompression bomb: a tiny file that would expand to gigabytes), which is
refused from its header, before any pixel is decoded.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

DICOM_SUFFIXES = {".dcm", ".dicom"}

#: The most pixels an image may declare (``reclf prepare --max-pixels``). 100 megapixels is 10000 x 10000,
#: several times the largest radiographs in MIMIC-CXR or CheXpert; a bigger file is almost surely corrupt or
#: hostile, and decoding it would take gigabytes.
DEFAULT_MAX_PIXELS = 100_000_000

#: What Pillow raises or reports for bad files (``DecompressionBombError`` is not an ``OSError``).
PIL_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError, MemoryError)


class ImageReadError(OSError):
    """An image file that is missing, truncated, not an image, or larger than ``max_pixels``."""


@contextlib.contextmanager
def _own_pixel_limit() -> Iterator[None]:
    """Switch Pillow's decompression-bomb check off while we apply ours (``check_pixels``) from the header."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def check_pixels(path: str | Path, width: int, height: int, max_pixels: int | None) -> None:
    """Raise :class:`ImageReadError` if ``width x height`` exceeds ``max_pixels`` (None: the default)."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if limit > 0 and int(width) * int(height) > limit:
        raise ImageReadError(
            f"image {path} declares {width} x {height} = {int(width) * int(height):,} pixels, more than the limit "
            f"of {limit:,} (a corrupt file or a decompression bomb; raise --max-pixels if it is genuine)"
        )


def load_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Read ``path`` as a ``float32`` ``[H, W]`` array in ``[0, 1]``."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file {path} does not exist")
    if path.suffix.lower() in DICOM_SUFFIXES:
        return load_dicom_with_meta(path, max_pixels)[0]
    try:
        with _own_pixel_limit(), Image.open(path) as img:
            check_pixels(path, *img.size, max_pixels)
            img.load()
            return pil_to_float(img)
    except ImageReadError:
        raise
    except PIL_ERRORS as exc:
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
    return load_dicom_with_meta(path)[0]


def _dicom_to_float(ds, pixels: np.ndarray, path: Path) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

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


# --- the prepared-image cache (used by ``reclf prepare``) -------------------------------------------------------
#
# A cached image is an 8-bit grayscale PNG whose short side is ``size`` (or a ``size`` x ``size`` square when the
# image is first padded to a square). The geometry is computed from the *original* dimensions so that a mask drawn
# at the original resolution (SIIM RLE, RSNA boxes) lands on exactly the same pixels as the image.

JPEG_SUFFIXES = {".jpg", ".jpeg"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def target_shape(height: int, width: int, size: int, square: bool = False) -> tuple[int, int]:
    """``(H, W)`` of the cached image for an original of ``height`` x ``width``."""
    if square:
        return size, size
    scale = size / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def read_for_cache(
    path: str | Path, size: int, max_pixels: int | None = None
) -> tuple[Image.Image | np.ndarray, tuple[int, int], dict]:
    """Read ``path`` for caching: ``(image, (orig_h, orig_w), meta)``.

    8-bit JPEG/PNG come back as a PIL ``L`` image (JPEGs decoded with DCT scaling straight to a size at least as
    large as needed, several times faster than a full decode); 16-bit images and DICOM as a float array from
    :func:`load_image` / :func:`load_dicom_with_meta`. ``meta`` holds the DICOM view position when there is one.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file {path} does not exist")
    if path.suffix.lower() in DICOM_SUFFIXES:
        arr, meta = load_dicom_with_meta(path, max_pixels)
        return arr, (int(arr.shape[0]), int(arr.shape[1])), meta
    try:
        with _own_pixel_limit():
            img: Image.Image = Image.open(path)
        width, height = img.size
        try:
            check_pixels(path, width, height, max_pixels)
        except ImageReadError:
            img.close()
            raise
        if path.suffix.lower() in JPEG_SUFFIXES or img.format == "JPEG":
            scale = size / min(width, height)
            if scale < 1.0:
                img.draft("L", (int(np.ceil(width * scale)), int(np.ceil(height * scale))))
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = pil_to_float(img) if img.mode != "F" else np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
            img.close()
            return arr, (height, width), {}
        if img.mode != "L":
            img = img.convert("L")
        return img, (height, width), {}
    except ImageReadError:
        raise
    except PIL_ERRORS as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


def to_cache_image(image: Image.Image | np.ndarray, orig_shape: tuple[int, int], size: int, square: bool = False):
    """Pad (optional) and resize to the cache geometry; returns an 8-bit ``L`` PIL image."""
    out_h, out_w = target_shape(*orig_shape, size, square)
    if isinstance(image, np.ndarray):
        arr = pad_to_square(image) if square else image
        img = Image.fromarray(arr.astype(np.float32), mode="F")
        img = img.resize((out_w, out_h), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return Image.fromarray(float_to_uint8(np.asarray(img, dtype=np.float32)), mode="L")
    if square:
        w, h = image.size
        n = max(w, h)
        canvas = Image.new("L", (n, n), 0)
        canvas.paste(image, ((n - w) // 2, (n - h) // 2))
        image = canvas
    return image.resize((out_w, out_h), Image.Resampling.BILINEAR, reducing_gap=2.0)


def mask_to_cache(mask: np.ndarray, size: int, square: bool = False) -> Image.Image:
    """A boolean mask at original resolution -> 8-bit (0/255) ``L`` image in the cache geometry (nearest)."""
    out_h, out_w = target_shape(int(mask.shape[0]), int(mask.shape[1]), size, square)
    arr = mask.astype(bool)
    if square:
        arr = pad_to_square(arr, value=False)
    img = Image.fromarray(arr.astype(np.uint8) * 255, mode="L")
    return img.resize((out_w, out_h), Image.Resampling.NEAREST)


def save_png_atomic(img: Image.Image, path: str | Path) -> None:
    """Write ``img`` as PNG under a temporary name and rename it: a reader never sees half a file."""
    from reclf.utils.io import atomic_path

    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", compress_level=1)


def png_is_complete(path: str | Path) -> bool:
    """Cheap integrity check for a cached PNG: the signature at the start and the IEND chunk at the end."""
    path = Path(path)
    try:
        n = path.stat().st_size
        if n < len(PNG_SIGNATURE) + len(PNG_IEND):
            return False
        with open(path, "rb") as fh:
            head = fh.read(8)
            fh.seek(n - len(PNG_IEND))
            tail = fh.read()
    except OSError:
        return False
    return head == PNG_SIGNATURE and tail == PNG_IEND


def load_dicom_with_meta(path: str | Path, max_pixels: int | None = None) -> tuple[np.ndarray, dict]:
    """:func:`load_dicom` plus header fields an adapter wants (``view``: ViewPosition, ``patient_id``)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        check_pixels(path, cols, rows * max(frames, 1), max_pixels)
        pixels = ds.pixel_array
    except ImageReadError:
        raise
    except (
        InvalidDicomError, AttributeError, ValueError, OSError, KeyError, TypeError, RuntimeError, MemoryError
    ) as exc:
        raise ImageReadError(f"cannot read DICOM {path}: {exc}") from exc
    arr = _dicom_to_float(ds, pixels, path)
    meta = {}
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view:
        meta["view"] = view
    patient = str(ds.get("PatientID", "") or "").strip()
    if patient:
        meta["patient_id"] = patient
    return arr, meta
