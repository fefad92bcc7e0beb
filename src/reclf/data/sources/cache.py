"""The resized image cache: many worker processes, atomic writes, resumable.

Each job reads one original image (JPEG/PNG/DICOM), resizes it to the cache geometry
(:func:`reclf.data.images.target_shape`) and writes an 8-bit PNG atomically, plus its mask when the job has one
(drawn at the original resolution, then resized with nearest neighbour, so image and mask stay aligned). A second
run skips every job whose outputs are complete PNGs and redoes only missing or broken ones. Header fields the
adapter wants (the DICOM view position) are stored in a PNG text chunk so a resumed run still knows them, beside
the source file's name and size: a cached PNG is reused only for the file it was made from, so a changed
table in the same ``--out`` never pairs a report with another file's image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from reclf.utils.io import atomic_write_json

CACHE_META = ".cache.json"
META_KEY = "reclf"
SOURCE_KEY = "reclf_source"


@dataclass(frozen=True)
class CacheJob:
    """One image to cache. ``dst`` / ``mask_dst`` are paths relative to the output folder."""

    key: str
    src: str
    dst: str
    mask_spec: str | None = None
    mask_dst: str | None = None


@dataclass
class CacheResult:
    written: int = 0
    reused: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason
    meta: dict[str, dict] = field(default_factory=dict)  # key -> header fields (e.g. {"view": "PA"})

    def summary(self) -> dict:
        return {"written": self.written, "reused": self.reused, "failed": len(self.failed)}


class CacheConfigError(ValueError):
    """The output folder holds a cache built with other settings."""


def check_cache_config(out: Path, size: int, square: bool) -> None:
    """Refuse to mix image sizes in one cache; record the settings on first use."""
    path = out / "images" / CACHE_META
    want = {"size": int(size), "square": bool(square)}
    if path.is_file():
        have = json.loads(path.read_text())
        if {k: have.get(k) for k in want} != want:
            raise CacheConfigError(
                f"{path} says the cache was built with {have}, not {want}; "
                "use another --out or the same --size/--square"
            )
        return
    atomic_write_json(path, want)


def source_id(src: str) -> dict:
    """What identifies the file a cached PNG was made from: its name and size (stable when the data set moves)."""
    try:
        n = os.path.getsize(src)
    except OSError:
        n = -1
    return {"name": Path(src).name, "bytes": int(n)}


def _reusable(out: Path, job: CacheJob) -> dict | None:
    """The header fields of a complete cached PNG made from ``job.src``; None when it must be (re)written."""
    from PIL import Image

    from reclf.data.images import png_is_complete

    path = out / job.dst
    if not png_is_complete(path) or (job.mask_dst is not None and not png_is_complete(out / job.mask_dst)):
        return None
    try:
        with Image.open(path) as img:
            text = getattr(img, "text", {}) or {}
            meta = json.loads(text.get(META_KEY, "{}"))
            source = json.loads(text[SOURCE_KEY]) if SOURCE_KEY in text else None
    except (OSError, ValueError):
        return None
    if source is not None and source != source_id(job.src):  # caches from before the key are trusted
        return None
    return meta if isinstance(meta, dict) else {}


def process_job(
    job: CacheJob, out: str, size: int, square: bool, max_pixels: int | None = None
) -> tuple[str, str, dict | str]:
    """Run one job; never raises for bad input. Returns ``(key, "written"|"reused"|"failed", meta or reason)``."""
    from PIL import PngImagePlugin

    from reclf.data.images import ImageReadError, mask_to_cache, read_for_cache, save_png_atomic, to_cache_image
    from reclf.data.sources.masks import MaskSpecError, mask_from_spec

    root = Path(out)
    reused = _reusable(root, job)
    if reused is not None:
        return job.key, "reused", reused
    try:
        image, shape, meta = read_for_cache(job.src, size, max_pixels)
        img = to_cache_image(image, shape, size, square)
        mask_img = None
        if job.mask_spec is not None and job.mask_dst is not None:
            mask_img = mask_to_cache(mask_from_spec(job.mask_spec, shape), size, square)
    except (ImageReadError, MaskSpecError, ValueError, OSError, MemoryError) as exc:
        return job.key, "failed", f"{type(exc).__name__}: {exc}"
    info = PngImagePlugin.PngInfo()
    info.add_text(META_KEY, json.dumps(meta, sort_keys=True))
    info.add_text(SOURCE_KEY, json.dumps(source_id(job.src), sort_keys=True))
    from reclf.utils.io import atomic_path

    with atomic_path(root / job.dst) as tmp:
        img.save(tmp, format="PNG", compress_level=1, pnginfo=info)
    if mask_img is not None and job.mask_dst is not None:
        save_png_atomic(mask_img, root / job.mask_dst)
    return job.key, "written", meta


def _run_chunk(
    jobs: Sequence[CacheJob], out: str, size: int, square: bool, max_pixels: int | None = None
) -> list[tuple[str, str, dict | str]]:
    return [process_job(job, out, size, square, max_pixels) for job in jobs]


def build_cache(
    jobs: Sequence[CacheJob],
    out: str | Path,
    size: int,
    square: bool = False,
    workers: int = 1,
    progress: bool = True,
    chunk: int = 8,
    max_pixels: int | None = None,
) -> CacheResult:
    """Cache every job's image under ``out`` with ``workers`` processes (1 = in this process)."""
    from tqdm import tqdm

    out = Path(out)
    check_cache_config(out, size, square)
    result = CacheResult()
    bar = tqdm(total=len(jobs), desc="caching images", unit="img", disable=not progress, dynamic_ncols=True)

    def collect(items: list[tuple[str, str, dict | str]]) -> None:
        for key, status, detail in items:
            if status == "failed":
                result.failed[key] = str(detail)
            else:
                if status == "written":
                    result.written += 1
                else:
                    result.reused += 1
                if detail:
                    result.meta[key] = dict(detail)  # type: ignore[arg-type]
        bar.update(len(items))

    try:
        if workers <= 1 or len(jobs) <= chunk:
            for start in range(0, len(jobs), chunk):
                collect(_run_chunk(jobs[start : start + chunk], str(out), size, square, max_pixels))
        else:
            import multiprocessing as mp

            # spawn: safe whatever threads the parent runs (pandas, tqdm); workers import only PIL/numpy/pydicom.
            ctx = mp.get_context("spawn")
            chunks = [list(jobs[s : s + chunk]) for s in range(0, len(jobs), chunk)]
            with ProcessPoolExecutor(max_workers=min(workers, os.cpu_count() or 1), mp_context=ctx) as pool:
                futures = [pool.submit(_run_chunk, c, str(out), size, square, max_pixels) for c in chunks]
                for fut in futures:
                    collect(fut.result())
    finally:
        bar.close()
    return result
