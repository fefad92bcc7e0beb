"""Training throughput of every method on its demo preset, side by side.

For each method: loader-only throughput (pairs/s of the training DataLoader: read, augment,
tokenise) and step throughput (pairs/s of full training steps: loading + forward + backward +
AdamW), the step time, and its ratio to ConVIRT's. A step much slower than the loader means the
model is the bottleneck; the reverse means more ``data.num_workers`` would help.

    python benchmarks/bench_train.py [--steps 10] [--batch 16] [--size 128] [--data out/synth/pretrain]
        [--methods convirt,gloria,...] [--out out/bench/train.json]

A run may carry config overrides after ``@``: ``--methods gloria,reclf,reclf@method.d_z=32`` times RECLF
as shipped and with narrower matching vectors side by side (``x gloria`` is against the first ``gloria`` run).
``@text_encoder.cache_file=…/text-minilm-mean-128.safetensors`` on every run reads the demo's cached text
features, as the demo trains (else the frozen MiniLM runs in every step, and RECLF's swapped-report
negatives pay it twice).

The demo's shape: ``--batch 32 --size 64 --threads 1`` (one core per run, as the demo runs them); the
``x gloria`` column is RECLF's cost target (docs/training.md).

Without a study table at ``--data`` the loader reads tiny random in-memory pairs (SyntheticPairs)
and says so: loader numbers are then not meaningful, step numbers still are.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from reclf.config import load_config
from reclf.data.studies import TABLE_NAMES
from reclf.demo.settings import METHODS as DEMO_RUNS
from reclf.methods import build_model
from reclf.train.datamodule import PretrainDataModule
from reclf.utils.io import atomic_write_json
from reclf.utils.seed import seed_everything


def _batches(loader, n: int):
    while True:
        for batch in loader:
            yield batch
            n -= 1
            if n <= 0:
                return


def bench_method(label: str, args: argparse.Namespace, synthetic: bool) -> dict:
    method, *extra = label.split("@")
    overrides = [
        f"data.batch_size={args.batch}",
        f"image_encoder.image_size={args.size}",
        f"data.num_workers={args.workers}",
        f"data.root={args.data}",
        *extra,
    ]
    cfg = load_config(f"demo_{method}", overrides)  # the shipped preset
    seed_everything(cfg.seed)
    model = build_model(cfg)
    dm = PretrainDataModule(cfg, model.tokenizer, synthetic=args.batch * (args.steps + 1) if synthetic else 0)
    dm.setup("fit")
    loader = dm.train_dataloader()

    t0 = time.perf_counter()
    n_pairs = sum(b["images"].shape[0] for b in _batches(loader, args.steps) if b["images"] is not None)
    loader_s = time.perf_counter() - t0

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    model.train()
    if hasattr(model, "on_train_epoch_start"):
        model.on_train_epoch_start(1)  # past MGCA's frozen-prototype epoch: time the full loss
    times, pairs = [], 0
    for i, batch in enumerate(_batches(loader, args.steps + 1)):
        t = time.perf_counter()
        terms = model.loss({"images": batch["images"], "tokens": batch["tokens"], "reports": batch["reports"]})
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        if i > 0:  # the first step pays one-off costs (allocation, lazy init)
            times.append(time.perf_counter() - t)
            pairs += batch["images"].shape[0]
    step_s = sum(times) / len(times)
    return {
        "method": label,
        "loader_pairs_per_s": round(n_pairs / loader_s, 1),
        "step_pairs_per_s": round(pairs / sum(times), 1),
        "step_time_s": round(step_s, 4),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--data", default="out/synth/pretrain")
    p.add_argument("--methods", default=",".join(DEMO_RUNS), help="demo runs (their presets demo_<run>)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="out/bench/train.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    synthetic = not any((Path(args.data) / n).is_file() for n in TABLE_NAMES)
    if synthetic:
        print(f"note: no study table at {args.data}: loader numbers use in-memory random pairs", file=sys.stderr)
    rows = [bench_method(m, args, synthetic) for m in args.methods.split(",")]
    def first(name: str) -> float | None:  # the first run of that method (its overrides, if any, included)
        return next((r["step_time_s"] for r in rows if r["method"].split("@")[0] == name), None)

    base, gloria = first("convirt"), first("gloria")
    header = ("method", "loader pairs/s", "step pairs/s", "step s", "x convirt", "x gloria", "params M")
    width = max(14, *(len(r["method"]) for r in rows))
    print(f"{header[0]:{width}s} " + " ".join(f"{h:>14s}" for h in header[1:]))
    for r in rows:
        r["step_time_vs_convirt"] = round(r["step_time_s"] / base, 2) if base else None
        r["step_time_vs_gloria"] = round(r["step_time_s"] / gloria, 2) if gloria else None
        print(
            f"{r['method']:{width}s} {r['loader_pairs_per_s']:14.1f} {r['step_pairs_per_s']:14.1f} "
            f"{r['step_time_s']:14.3f} "
            f"{r['step_time_vs_convirt'] or float('nan'):14.2f} {r['step_time_vs_gloria'] or float('nan'):14.2f} "
            f"{r['params_m']:14.2f}"
        )
    meta = {
        "steps": args.steps,
        "batch": args.batch,
        "size": args.size,
        "workers": args.workers,
        "threads": torch.get_num_threads(),
        "data": "synthetic-in-memory" if synthetic else args.data,
    }
    atomic_write_json(args.out, {"settings": meta, "results": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
