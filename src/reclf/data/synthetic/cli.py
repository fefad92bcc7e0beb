"""`reclf synth`: generate SynthCXR, the built-in synthetic chest-radiograph + report benchmark.

Only argparse at module top: ``reclf --help`` imports this module for every command.
"""

from __future__ import annotations

import argparse

SIZE_RANGE = (64, 512)
N_RANGE = (20, 1_000_000)
PER_CLASS_RANGE = (2, 10_000)
WORKERS_RANGE = (1, 256)


def _ranged_int(name: str, lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be between {lo} and {hi}, got {value}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (refused if it exists and is not empty)")
    parser.add_argument(
        "--n",
        type=_ranged_int("--n", *N_RANGE),
        default=4000,
        help="studies in the paired pretraining corpus (default 4000)",
    )
    parser.add_argument(
        "--size",
        type=_ranged_int("--size", *SIZE_RANGE),
        default=128,
        help="image side in pixels, 64..512 (default 128)",
    )
    parser.add_argument("--seed", type=_ranged_int("--seed", 0, 2**31 - 1), default=0, help="random seed")
    parser.add_argument(
        "--per-class",
        type=_ranged_int("--per-class", *PER_CLASS_RANGE),
        default=200,
        help="images per class of the evaluation sets (default 200)",
    )
    parser.add_argument(
        "--workers",
        type=_ranged_int("--workers", *WORKERS_RANGE),
        default=1,
        help="worker processes (outputs are identical whatever the number)",
    )
    parser.add_argument(
        "--classification-n",
        type=_ranged_int("--classification-n", *N_RANGE),
        default=None,
        help="studies of the classification set (default 6 x --per-class)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--preview", action="store_true", help="also write DIR/preview.png (a montage)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from reclf.data.synthetic.generate import generate

    manifest = generate(
        out=Path(args.out),
        n=args.n,
        size=args.size,
        seed=args.seed,
        per_class=args.per_class,
        classification_n=args.classification_n,
        workers=args.workers,
        overwrite=args.overwrite,
        preview=args.preview,
        progress=True,
    )
    print(manifest.summary())
    return 0
