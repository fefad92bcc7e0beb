"""``reclf prepare SOURCE``: turn a real data set, as distributed, into a study table, splits and an image cache.

Light imports only at module level (``reclf --help`` must stay instant); the work happens in :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

SOURCE_NAMES = ("mimic-cxr", "chexpert", "rsna", "siim", "covidx", "iu-xray", "pairs-csv", "ms-cxr", "chest-imagenome")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=SOURCE_NAMES, help="the data set")
    parser.add_argument("--root", required=True, type=Path, help="folder of the data set as distributed")
    parser.add_argument("--out", required=True, type=Path, help="output folder (table, splits, images, report)")
    parser.add_argument("--size", type=int, default=512, help="short side of cached images in pixels (512)")
    parser.add_argument("--square", action="store_true", help="pad to a square before resizing (size x size)")
    parser.add_argument(
        "--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 1)), help="image worker processes"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every split and sample (0)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad file/row instead of counting it")
    parser.add_argument(
        "--metadata-only",
        action="store_true",
        help="parse metadata only; no image is read, image_path points at the originals",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--encoding",
        default=None,
        help="text encodings of CSVs and reports, tried per line in order (utf-8; e.g. utf-8,cp1252); "
        "a line none decodes is dropped and counted",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="an image declaring more pixels is counted as unreadable, not decoded (100000000)",
    )
    parser.add_argument("--views", default=None, help="views to keep, comma-separated (mimic-cxr, chexpert: PA,AP)")
    g = parser.add_argument_group("mimic-cxr")
    g.add_argument(
        "--reports",
        type=Path,
        default=None,
        help="MIMIC-CXR reports: folder holding files/ or mimic-cxr-reports.zip (default: --root)",
    )
    g = parser.add_argument_group("chexpert / covidx")
    g.add_argument(
        "--uncertain",
        default=None,
        help="chexpert -1 policy: keep (default), ones, zeros, gloria, or LABEL=1,LABEL=0,...",
    )
    g.add_argument("--zeroshot-per-class", type=int, default=None, help="chexpert 5x200 size per class (200; 0=off)")
    g.add_argument("--retrieval-per-class", type=int, default=None, help="chexpert 8x200 size per class (200; 0=off)")
    g.add_argument(
        "--valid-fraction",
        type=float,
        default=None,
        help="patient fraction for valid from the training list (chexpert 0.1, covidx 0.2)",
    )
    g.add_argument("--release", default=None, help="covidx release name (default: from the list file names)")
    g = parser.add_argument_group("siim")
    g.add_argument("--balanced-train", action="store_true", help="siim: as many training negatives as positives")
    g = parser.add_argument_group("ms-cxr / chest-imagenome")
    g.add_argument(
        "--mimic-jpg",
        type=Path,
        default=None,
        help="the MIMIC-CXR-JPG folder holding files/pXX/... (default: --root); ms-cxr's --csv names its CSV",
    )
    g = parser.add_argument_group("pairs-csv")
    g.add_argument("--csv", type=Path, default=None, help="the CSV (default <root>/pairs.csv)")
    g.add_argument("--image-column", default=None, help="image path column (image)")
    g.add_argument("--report-column", default=None, help="report text column (report)")
    g.add_argument("--patient-column", default=None, help="patient id column (optional)")
    g.add_argument("--split-column", default=None, help="split column (optional)")
    g.add_argument("--id-column", default=None, help="unique id column (optional)")


EXTRA_KEYS = (
    "encoding",
    "views",
    "reports",
    "uncertain",
    "zeroshot_per_class",
    "retrieval_per_class",
    "valid_fraction",
    "release",
    "balanced_train",
    "csv",
    "image_column",
    "report_column",
    "patient_column",
    "split_column",
    "id_column",
    "mimic_jpg",
)


def options_from_args(args: argparse.Namespace):
    from reclf.data.sources.common import PrepareOptions

    if args.size < 8:
        raise ValueError(f"--size {args.size} is too small (use e.g. 224 or 512)")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise ValueError(f"--max-pixels {args.max_pixels} must be a positive number of pixels")
    if not Path(args.root).is_dir():
        raise FileNotFoundError(f"--root {args.root} is not a folder")
    extra = {k: getattr(args, k) for k in EXTRA_KEYS if getattr(args, k, None) not in (None, False)}
    return PrepareOptions(
        root=Path(args.root),
        out=Path(args.out),
        size=args.size,
        workers=max(1, args.workers),
        seed=args.seed,
        strict=args.strict,
        square=args.square,
        metadata_only=args.metadata_only,
        progress=not args.no_progress,
        max_pixels=args.max_pixels,
        extra=extra,
    )


def run(args: argparse.Namespace) -> int:
    from reclf.data.sources import prepare

    opts = options_from_args(args)
    report = prepare(args.source, opts)
    summary = {k: report[k] for k in ("source", "rows_read", "rows_written", "splits", "dropped_total", "cache")}
    print(json.dumps(summary, indent=2))
    for name, f in report["dropped"].items():
        print(f"  dropped {f['count']:>8} {name}: {f['reason']}")
    shared = report.get("notes", {}).get("rows_sharing_an_image")
    if shared:
        print(f"  note: {shared['count']} rows name {shared['files']} image file(s) that another row names too "
              f"(kept), e.g. {', '.join(shared['examples'][:3])}")
    print(f"wrote {opts.out}/studies.csv and {opts.out}/prepare_report.json")
    return 0
