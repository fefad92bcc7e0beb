"""SynthCXR throughput: studies/s for 1 vs 2 workers at 128 and 224 px, side by side.

    .venv/bin/python benchmarks/bench_synth.py [--n 400] [--sizes 128 224] [--workers 1 2]

Times the full path (spec sampling, rendering, PNG image + mask writing, table writing) of the
``pretrain`` set into a temporary folder, and prints the load average before and after (the
development machine is shared). Target: 10,000 studies at 128 px in under 2 minutes on 2 cores
(83 studies/s).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from reclf.data.synthetic.generate import generate


def measure(n: int, size: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate(Path(tmp) / "out", n=n, size=size, seed=0, per_class=2, workers=workers, sets=("pretrain",))
        return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="studies per measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"SynthCXR pretrain set, n={args.n}, {os.cpu_count()} CPUs visible, {_load()}")
    print(f"{'size':>6} " + " ".join(f"{f'{w} worker(s)':>14}" for w in args.workers) + f" {'10k studies':>14}")
    for size in args.sizes:
        rates = [measure(args.n, size, w) for w in args.workers]
        best = max(rates)
        print(f"{size:>6} " + " ".join(f"{r:>10.1f} st/s" for r in rates) + f" {10_000 / best:>12.0f} s")
    print(f"after: {_load()} (the machine may be shared: compare runs at similar load)")


def _load() -> str:
    """The 1/5/15-minute load averages (other jobs on a shared machine slow every number down)."""
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not available on every platform
        return "load average unknown"


if __name__ == "__main__":
    main()
