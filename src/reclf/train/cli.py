"""``reclf pretrain PRESET|CONFIG.yaml [key=value ...]``: train a method (see docs/training.md).

The config is resolved (defaults <- preset <- overrides) and the model is built before any
data is read, so an unknown key or a bad method hyper-parameter fails in a second.
"""

from __future__ import annotations

import argparse
import sys


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


def run(args: argparse.Namespace) -> int:
    from reclf.config import load_config
    from reclf.train.module import NonFiniteLossError
    from reclf.train.pretrain import pretrain

    cfg = load_config(args.config, args.overrides)
    try:
        result = pretrain(cfg)
    except NonFiniteLossError as exc:
        print(f"reclf pretrain: stopped: {exc}", file=sys.stderr)
        return 1
    if result.run_dir is None:
        print("reclf pretrain: dry run OK (2 steps, nothing written)")
    else:
        print(f"run: {result.run_dir}")
        print(f"best checkpoint: {result.best_checkpoint}")
        print(f"last checkpoint: {result.last_checkpoint}")
        print(f"exported model: {result.export_dir}")
    return 0
