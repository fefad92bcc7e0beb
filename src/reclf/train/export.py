"""``reclf export CKPT --out DIR``: a training checkpoint -> the ``save_pretrained`` folder.

Evaluation reads models only from ``save_pretrained`` folders (``model.safetensors`` +
``config.json``), never from Lightning checkpoints. The checkpoint is read with
``weights_only=True``; the model is rebuilt from the resolved run config stored inside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

STATE_PREFIX = "model."


def model_state_dict(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The method model's weights from a Lightning checkpoint of ``PretrainModule``."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError("not a reclf model or checkpoint: it has no state_dict; give a `reclf pretrain` checkpoint")
    return {k[len(STATE_PREFIX) :]: v for k, v in state.items() if k.startswith(STATE_PREFIX)}


def export_checkpoint(ckpt: str | Path, out: str | Path, model: Any = None, overwrite: bool = False) -> Path:
    """Write ``out`` = ``model.save_pretrained`` of the weights in ``ckpt``; returns ``out``.

    ``model``: a model of the right architecture to load the weights into (default: rebuilt
    from the config saved in the checkpoint with ``reclf.methods.build_model``).
    """
    from reclf.methods.model_card import training_info_from_checkpoint, write_model_card
    from reclf.methods.saving import is_model_folder
    from reclf.train.runs import load_checkpoint
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
    if not isinstance(checkpoint, dict):
        raise ValueError(f"not a reclf model or checkpoint: {ckpt} (it holds no mapping)")
    if model is None:
        from reclf.config import Config, from_dict
        from reclf.methods import build_model

        meta = checkpoint.get("reclf")
        cfg_dict = meta.get("config") if isinstance(meta, dict) else None
        if not isinstance(cfg_dict, dict) or not cfg_dict:
            raise ValueError(
                f"not a reclf model or checkpoint: {ckpt} holds no run config (checkpoint['reclf']['config']); "
                "give a checkpoint written by `reclf pretrain`"
            )
        model = build_model(from_dict(Config, cfg_dict))
    try:
        missing, unexpected = model.load_state_dict(model_state_dict(checkpoint), strict=False)
    except RuntimeError as exc:  # tensors whose shapes do not fit the config
        first = str(exc).strip().splitlines()[0]
        raise ValueError(
            f"not a reclf model or checkpoint: {ckpt}: its weights do not fit its config ({first})"
        ) from exc
    if missing or unexpected:
        raise ValueError(
            f"{ckpt} does not match the model: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
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
