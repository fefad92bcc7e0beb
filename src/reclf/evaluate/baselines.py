"""Floors and ceilings: the numbers every pretrained model should sit between.

- **floor**: a randomly initialised model of the same architecture (``make_random``): what the
  architecture gives with no pretraining at all (zero-shot and retrieval at chance, the linear
  probe on random features);
- **ceiling**: a supervised image encoder of the same architecture trained on the labels of the
  classification set with multi-label BCE (``train_supervised``): what direct supervision on
  these labels reaches (meaningful for the image-only tasks: linear probe, segmentation).

Both are written as ordinary model folders (``save_pretrained``) with a ``baseline.json`` beside
them, so every task evaluates them exactly like a pretrained model.

The attention and diagnostics metrics (grounding's pointing game and entropy, importance AUROC, relation
masses) have a floor per architecture instead: GLoRIA's double softmax is compared with a random-init
GLoRIA, not with a random-init RECLF. ``floor_model`` builds that twin of the evaluated model (same
method and encoders, random weights, :data:`FLOOR_SEED` for every method) and the grounding and
diagnostics tasks score it beside the model (``floor/*`` metrics of the same result).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reclf.evaluate.common import choose_target, label_targets, load_table
from reclf.evaluate.features import iter_image_batches
from reclf.evaluate.loading import LoadedModel, image_size_of
from reclf.evaluate.metrics import macro_auroc
from reclf.evaluate.optim import AdamW
from reclf.methods.interface import EvaluableModel
from reclf.utils.io import atomic_write_json

BASELINE_FILE = "baseline.json"
#: The initialisation of every random-init floor (the demo's floor model and the per-architecture floors).
FLOOR_SEED = 12345
FLOOR_MEANING = ("floor/*: the same architecture (method, encoders) with random weights, scored on the same "
                 "data: what the metric gives before any training")


def fresh_like(model: EvaluableModel, seed: int) -> Any:
    """A new, randomly initialised model with ``model``'s architecture and method (its config).

    The weights depend on ``seed`` alone; the global random state is left as it was."""
    from reclf.methods import create_model

    cfg = copy.deepcopy(model.config)
    method = dict(cfg["method"])
    name = method.pop("name")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(name, cfg["image_encoder"], cfg["text_encoder"], **method)


def floor_model(loaded: LoadedModel, seed: int = FLOOR_SEED) -> EvaluableModel | None:
    """The random-init twin of ``loaded.model`` (eval mode), the floor of its attention metrics; ``None`` when
    the model is itself a baseline (a floor or a ceiling) or its config does not rebuild offline (a method
    reclf does not know, a text encoder that is not built in)."""
    from reclf.config import BUILTIN_TEXT_ENCODERS
    from reclf.methods.params import METHODS

    if loaded.label.startswith(("floor", "ceiling")):
        return None
    cfg = loaded.model.config
    method, text = cfg.get("method"), cfg.get("text_encoder")
    if not isinstance(method, dict) or method.get("name") not in METHODS:
        return None
    if not isinstance(text, dict) or text.get("name") not in BUILTIN_TEXT_ENCODERS:
        return None
    twin = fresh_like(loaded.model, seed)
    twin.eval()
    return twin


def make_random(model: EvaluableModel, out: str | Path, seed: int = 0) -> Path:
    """Save a random-init twin of ``model`` to ``out`` (the floor)."""
    fresh = fresh_like(model, seed)
    fresh.save_pretrained(out)
    atomic_write_json(Path(out) / BASELINE_FILE, {"kind": "random", "seed": seed, "method": fresh.method})
    return Path(out)


@dataclass
class SupervisedConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    image_size: int | None = None


def _stack(table: Any, size: int, batch: int) -> tuple[torch.Tensor, np.ndarray]:
    xs, rows = [], []
    for idx, x in iter_image_batches(table.paths(), size, batch, bad=[]):
        xs.append(x)
        rows.append(idx)
    return torch.cat(xs), np.concatenate(rows)


def train_supervised(model: EvaluableModel, data: str | Path, out: str | Path, cfg: SupervisedConfig) -> dict[str, Any]:
    """Train a same-architecture image encoder on the classification labels (BCE); save it to ``out``.

    The epoch with the best validation macro AUROC is kept. Returns what was trained and measured.
    """
    fresh = fresh_like(model, cfg.seed)
    size = cfg.image_size or image_size_of(model)
    table = load_table(data)
    _, labels = choose_target(table.df, target="labels")
    x, kept = _stack(table, size, cfg.batch_size)
    df = table.df.iloc[kept].reset_index(drop=True)
    y = torch.as_tensor(label_targets(df, labels), dtype=torch.float32)
    split = df["split"].to_numpy()
    tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "valid")
    if not len(tr):
        raise ValueError(f"{table.folder}: no training rows for the supervised ceiling")
    encoder = fresh.image_encoder
    head = nn.Linear(encoder.global_dim, len(labels))
    params = list(encoder.parameters()) + list(head.parameters())
    opt = AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, curve = -1.0, None, []
    for _ in range(cfg.epochs):
        encoder.train()
        order = torch.as_tensor(tr)[torch.randperm(len(tr), generator=gen)]
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:
                continue
            logits = head(encoder(x[idx]).global_)
            keep = ~torch.isnan(y[idx])
            loss = nn.functional.binary_cross_entropy_with_logits(logits[keep], y[idx][keep])
            opt.zero_grad()
            loss.backward()
            opt.step()
        encoder.eval()
        ev = va if len(va) else tr
        with torch.no_grad():
            scores = torch.cat([torch.sigmoid(head(encoder(x[ev[i : i + 64]]).global_)) for i in
                                range(0, len(ev), 64)])
        auc = macro_auroc(y[ev].numpy(), scores.numpy())
        curve.append(auc)
        if not np.isnan(auc) and auc > best:
            best, best_state = auc, copy.deepcopy(encoder.state_dict())
    if best_state is not None:
        encoder.load_state_dict(best_state)
    fresh.eval()
    fresh.save_pretrained(out)
    info = {"kind": "supervised", "labels": labels, "val_macro_auroc_curve": curve, "best_val_macro_auroc": best,
            "train_rows": int(len(tr)), "data": str(table.folder), "config": asdict(cfg), "method": fresh.method}
    atomic_write_json(Path(out) / BASELINE_FILE, info)
    return info
