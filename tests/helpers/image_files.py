"""Tiny image files in the formats real data sets ship (for tests and benchmarks; no real data needed).

A test helper, not part of the library (it was ``reclf.data.sources.testing``).

``write_dicom`` makes a valid uncompressed DICOM radiograph (MONOCHROME1/2, 8/12/16-bit, optional window), the
case that breaks naive readers; ``write_jpeg`` / ``write_png`` the 8-bit files of MIMIC-CXR-JPG, CheXpert, NLMCXR.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def gradient(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A float image in [0, 1]: a left-to-right ramp plus a little seeded noise (orientation is checkable)."""
    ramp = np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))
    noise = np.random.default_rng(seed).normal(0, 0.02, (height, width)).astype(np.float32)
    return np.clip(ramp + noise, 0.0, 1.0)


def write_png(path: str | Path, arr: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.rint(arr * 255), 0, 255).astype(np.uint8), mode="L").save(path)
    return path


def write_jpeg(path: str | Path, arr: np.ndarray, quality: int = 90) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.rint(arr * 255), 0, 255).astype(np.uint8), mode="L").save(path, quality=quality)
    return path


def write_dicom(
    path: str | Path,
    arr: np.ndarray,
    bits: int = 16,
    monochrome1: bool = False,
    window: tuple[float, float] | None = None,
    view: str | None = None,
    patient_id: str = "anon",
) -> Path:
    """Write ``arr`` (float in [0, 1], bright = dense) as an uncompressed DICOM.

    With ``monochrome1`` the stored values are inverted (as MONOCHROME1 files store them), so a correct reader
    recovers ``arr``. ``bits`` 8 or 12/16 sets the stored range.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    top = 255 if bits == 8 else (1 << bits) - 1
    values = 1.0 - arr if monochrome1 else arr
    stored = np.rint(np.clip(values, 0, 1) * top).astype(np.uint8 if bits == 8 else np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.Modality = "CR"
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = float(window[0]), float(window[1])
    if view:
        ds.ViewPosition = view
    ds.PixelData = stored.tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path
