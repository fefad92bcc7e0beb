"""``reclf pretrain PRESET|CONFIG.yaml [key=value ...]``: train a method (see docs/training.md).

The config is resolved (defaults <- preset <- overrides) and the model is built before any
data is read, so an unknown key or a bad method hyper-parameter fails in a second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", help="a shipped preset by name (e.g. demo_reclf; `reclf presets` lists them) or a YAML file"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. train.max_steps=200 data.batch_size=16 train.resume=auto train.dry_run=true",
    )


def mark_failed_runs(runs_root: Path, before: set[str], error: BaseException) -> list[Path]:
    """Give each run folder created since ``before`` that has no ``summary.json`` one that says it failed.

    A run that fails before its first step (an unwritable folder, bad data found late, an out-of-memory
    error) would otherwise leave a folder with only ``config.yaml`` and ``env.json`` that looks like a run.
    """
    from reclf.utils.io import atomic_write_json

    marked: list[Path] = []
    if not runs_root.is_dir():
        return marked
    for run_dir in sorted(runs_root.iterdir()):
        if run_dir.name in before or not run_dir.is_dir() or (run_dir / "summary.json").exists():
            continue
        ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        summary: dict[str, Any] = {
            "status": f"failed: {type(error).__name__}: {first}",
            "failed_before_first_checkpoint": not ckpts,
            "checkpoints": ckpts,
        }
        try:
            atomic_write_json(run_dir / "summary.json", summary)
        except OSError:
            continue  # the folder itself is not writable: nothing more we can do
        marked.append(run_dir)
    return marked


def run(args: argparse.Namespace) -> int:
    from reclf.config import load_config
    from reclf.train.module import NonFiniteLossError
    from reclf.train.pretrain import pretrain

    cfg = load_config(args.config, args.overrides)
    runs_root = Path(cfg.train.runs_dir) / cfg.name
    before = {p.name for p in runs_root.iterdir()} if runs_root.is_dir() else set()
    try:
        result = pretrain(cfg)
    except NonFiniteLossError as exc:
        print(f"reclf pretrain: stopped: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if not cfg.train.dry_run:
            for run_dir in mark_failed_runs(runs_root, before, exc):
                print(f"reclf pretrain: marked {run_dir} as failed (summary.json)", file=sys.stderr)
        raise
    if result.run_dir is None:
        print("reclf pretrain: dry run OK (2 steps, nothing written)")
    else:
        print(f"run: {result.run_dir}")
        print(f"best checkpoint: {result.best_checkpoint}")
        print(f"last checkpoint: {result.last_checkpoint}")
        print(f"exported model: {result.export_dir}")
    return 0
