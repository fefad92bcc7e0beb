"""Throughput of the `reclf prepare` image cache: images/s for 1024x1024 DICOMs and 2500x3000 JPEGs -> 512.

Generates its inputs in a temporary folder, runs the cache with 1 and 2 worker processes side by side, and projects
the time to prepare all of MIMIC-CXR-JPG (377,110 images) at the measured JPEG rate. The 2-worker figure includes
the one-off start of the worker processes (spawn: each imports numpy/pandas/PIL), a few seconds that a small --n
does not amortise; on a shared machine the rates vary with the load.

    .venv/bin/python benchmarks/bench_prepare.py [--n 16] [--size 512]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from reclf.data.sources.cache import CacheJob, build_cache

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the image writers are test helpers
from helpers.image_files import gradient, write_dicom, write_jpeg  # noqa: E402

MIMIC_IMAGES = 377_110


def make_inputs(folder: Path, n: int) -> dict[str, list[Path]]:
    dicoms = [
        write_dicom(folder / f"d{i}.dcm", gradient(1024, 1024, seed=i), bits=12, monochrome1=i % 2 == 1)
        for i in range(n)
    ]
    jpegs = [write_jpeg(folder / f"j{i}.jpg", gradient(3000, 2500, seed=i), quality=95) for i in range(n)]
    return {"DICOM 1024x1024 (12-bit)": dicoms, "JPEG 2500x3000": jpegs}


def timed(paths: list[Path], out: Path, size: int, workers: int) -> float:
    jobs = [CacheJob(str(p), str(p), f"images/{p.stem}.png") for p in paths]
    t0 = time.perf_counter()
    res = build_cache(jobs, out, size, workers=workers, progress=False, chunk=1 if len(paths) <= 4 else 2)
    elapsed = time.perf_counter() - t0
    assert res.written == len(paths) and not res.failed, res.failed
    return elapsed


def rate(paths: list[Path], out: Path, size: int, workers: int) -> tuple[float, float]:
    """(images/s including the start of the workers, images/s once they run: the marginal rate)."""
    full = timed(paths, out / "full", size, workers)
    few = timed(paths[:3], out / "few", size, workers)
    marginal = (len(paths) - 3) / max(full - few, 1e-9)
    return len(paths) / full, marginal


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=24, help="images per kind")
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = make_inputs(tmp / "in", args.n)
        print(f"{'input':26s} {'1 worker img/s':>15s} {'2 workers img/s':>16s}   (in brackets: once started)")
        rates = {}
        for kind, paths in inputs.items():
            r1 = rate(paths, tmp / f"out1-{kind[:4]}", args.size, 1)
            r2 = rate(paths, tmp / f"out2-{kind[:4]}", args.size, 2)
            rates[kind] = (r1[1], r2[1])
            print(f"{kind:26s} {r1[0]:6.1f} ({r1[1]:6.1f}) {r2[0]:7.1f} ({r2[1]:6.1f})")
        for w, r in zip((1, 2), rates["JPEG 2500x3000"]):
            print(
                f"projection: MIMIC-CXR-JPG, {MIMIC_IMAGES:,} JPEGs at {r:.1f} img/s with {w} worker(s): "
                f"{MIMIC_IMAGES / r / 3600:.1f} h"
            )


if __name__ == "__main__":
    main()
