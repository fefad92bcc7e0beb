"""``reclf export CKPT --out DIR``: a training checkpoint -> the ``save_pretrained`` folder.

The checkpoint becomes a model through :func:`reclf.methods.loading.model_from_checkpoint`, the one
route every command uses (``weights_only=True``, the model rebuilt from the run config stored in the
checkpoint, strict key loading); this module only writes the folder and its model card.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def export_checkpoint(ckpt: str | Path, out: str | Path, model: Any = None, overwrite: bool = False) -> Path:
    """Write ``out`` = ``model.save_pretrained`` of the weights in ``ckpt``; returns ``out``.

    ``model``: a model of the right architecture to load the weights into (default: rebuilt
    from the config saved in the checkpoint with ``reclf.methods.build_model``).
    """
    from reclf.methods.loading import load_checkpoint, model_from_checkpoint
    from reclf.methods.model_card import training_info_from_checkpoint, write_model_card
    from reclf.methods.saving import is_model_folder
    from reclf.utils.io import atomic_dir

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_model_folder(out))):
        raise FileExistsError(
            f"{out} exists and is not a reclf model folder; --overwrite replaces only model folders "
            "(nothing was deleted); choose a new --out"
        )
    checkpoint = load_checkpoint(ckpt)
    model = model_from_checkpoint(ckpt, checkpoint, model=model)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        # the card of save_pretrained, plus what the checkpoint knows of the run (data, steps, seed)
        write_model_card(tmp, training_info_from_checkpoint(checkpoint, ckpt), name=out.name)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint of `reclf pretrain` (runs/<name>/<time>/checkpoints/*.ckpt)")
    parser.add_argument("--out", required=True, help="output folder (model.safetensors + config.json + README.md)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it is an existing model folder")


def run(args: argparse.Namespace) -> int:
    out = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"exported {args.checkpoint} -> {out}")
    return 0
