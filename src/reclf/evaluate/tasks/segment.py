"""Segmentation: a U-Net decoder on the pretrained encoder, frozen or fine-tuned, at label fractions.

For each label fraction (patient-level, seeded, as the linear probe) and seed a fresh decoder (and,
with ``freeze_encoder=False``, a fresh copy of the encoder) trains on the training split; the
epoch with the best validation Dice is kept and scored on the test split.

Metrics (threshold 0.5 on the sigmoid), per image then averaged:
- ``dice`` / ``iou`` over **all** test images, with the empty-mask convention: an image whose
  true mask is empty scores 1 if the prediction is empty too, else 0;
- ``dice_pos`` / ``iou_pos`` over the **positive** images only (non-empty true mask).

Protocol presets (``segment_preset``; results.json records the preset and every value):
- ``mgca``: MGCA's frozen protocol (``mgca_segmenter.py``): frozen encoder, U-Net decoder 256-128-64-32-16,
  AdamW lr 2e-4, weight decay 0.05, batch 8, 50 epochs, 10 x focal - log Dice, early stopping on the
  validation loss (patience 10), training set balanced (every positive + as many seeded negatives), 224 px;
- ``gloria``: GLoRIA's fine-tuned protocol (``pneumothorax_segmentation_config.yaml``): the whole network
  trained, Adam-style betas (0.5, 0.999), lr 5e-4, weight decay 1e-6, batch 8, up to 100 epochs, the same
  mixed loss, early stopping on validation Dice (patience 20), balanced training set, 512 px.
Without a preset the defaults are a small, fast decoder for CPU runs (``width`` 16).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reclf.evaluate.common import Table, data_info, load_table, model_info, patient_subset
from reclf.evaluate.features import prepare_image, prepare_mask
from reclf.evaluate.loading import LoadedModel, image_size_of
from reclf.evaluate.metrics import dice_iou, positives
from reclf.evaluate.optim import AdamW
from reclf.evaluate.results import TaskResult, format_table, write_results
from reclf.evaluate.stats import Estimate, mean_ci, summarise_seeds
from reclf.methods.interface import EvaluableModel
from reclf.models.unet import Segmenter, segmentation_loss


@dataclass
class SegmentConfig:
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    freeze_encoder: bool = True
    epochs: int = 10
    min_steps: int = 120  # small training subsets (1 %) run more epochs to get this many updates
    batch_size: int = 16
    lr: float = 5e-4
    encoder_lr: float = 1e-4  # when fine-tuning
    weight_decay: float = 1e-4
    width: int = 16  # decoder width at the finest level (when decoder_channels is not set)
    decoder_channels: list[int] | None = None  # coarse to fine, e.g. [256, 128, 64, 32, 16] (segmentation-models)
    loss: str = "bce_dice"  # bce_dice | focal_dice (10 x focal - log Dice, GLoRIA / MGCA)
    balance_train: bool = False  # every positive training image + as many seeded negatives (MGCA, GLoRIA)
    betas: tuple[float, float] = (0.9, 0.999)
    monitor: str = "dice"  # dice | loss: what early stopping and the kept epoch follow
    patience: int | None = None  # validations without improvement before stopping (None: never)
    eval_every: int | None = None  # epochs between validations (None: about 8 validations per run)
    preset: str | None = None  # the protocol these values came from (segment_preset)
    threshold: float = 0.5
    image_size: int | None = None
    n_boot: int = 1000
    device: str = "cpu"
    seg_task: str | None = None  # only the rows whose `task` column equals this (SynthCXR: pneumothorax | opacity)


SEGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "mgca": {"freeze_encoder": True, "epochs": 50, "min_steps": 0, "batch_size": 8, "lr": 2e-4,
             "weight_decay": 0.05, "decoder_channels": [256, 128, 64, 32, 16], "loss": "focal_dice",
             "balance_train": True, "monitor": "loss", "patience": 10, "eval_every": 1, "image_size": 224},
    "gloria": {"freeze_encoder": False, "epochs": 100, "min_steps": 0, "batch_size": 8, "lr": 5e-4,
               "encoder_lr": 5e-4, "weight_decay": 1e-6, "betas": (0.5, 0.999),
               "decoder_channels": [256, 128, 64, 32, 16], "loss": "focal_dice", "balance_train": True,
               "monitor": "dice", "patience": 20, "eval_every": 1, "image_size": 512},
}


def segment_preset(name: str | None, **overrides: Any) -> SegmentConfig:
    """A ``SegmentConfig`` with the protocol ``name`` (mgca | gloria | None) and then ``overrides`` applied."""
    if name is not None and name not in SEGMENT_PRESETS:
        raise ValueError(f"segmentation preset {name!r}: choose one of {sorted(SEGMENT_PRESETS)}")
    values = (SEGMENT_PRESETS[name] if name else {}) | {k: v for k, v in overrides.items() if v is not None}
    return SegmentConfig(**values, preset=name)


def segment_config(**values: Any) -> SegmentConfig:
    """The registry's builder: ``preset`` (if given) first, then the other values given over it."""
    return segment_preset(values.pop("preset", None), **values)


def balanced_rows(masks_nonempty: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray:
    """Every positive row + as many negatives drawn with a seeded generator (all negatives if fewer)."""
    pos, neg = rows[masks_nonempty], rows[~masks_nonempty]
    take = np.random.default_rng(seed).permutation(len(neg))[: len(pos)]
    return np.sort(np.concatenate([pos, neg[take]]))


def load_pixels(table: Table, size: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, list]:
    """Images ``[N,1,S,S]`` and masks ``[N,1,S,S]`` of the readable rows (empty ``mask_path`` = empty mask)."""
    from reclf.data.images import ImageReadError

    imgs, masks, kept, bad = [], [], [], []
    for i, (img_path, rel) in enumerate(zip(table.paths(), table.df["mask_path"].astype(str))):
        try:
            img = prepare_image(img_path, size)
            mask = prepare_mask(table.folder / rel, size) if rel else np.zeros((size, size), dtype=bool)
        except (ImageReadError, OSError, ValueError) as exc:
            bad.append((i, str(exc)))
            continue
        imgs.append(img)
        masks.append(mask)
        kept.append(i)
    if not kept:
        raise ValueError(f"{table.folder}: no readable image/mask pairs (first error: {bad[:1]})")
    return (torch.from_numpy(np.stack(imgs))[:, None], torch.from_numpy(np.stack(masks)).float()[:, None],
            np.asarray(kept), bad)


@torch.no_grad()
def predict(seg: Segmenter, x: torch.Tensor, batch: int, threshold: float, device: str) -> np.ndarray:
    seg.eval()
    out = [(torch.sigmoid(seg(x[i : i + batch].to(device))) >= threshold).cpu() for i in range(0, len(x), batch)]
    return torch.cat(out)[:, 0].numpy()


def train_segmenter(encoder: Any, x_tr: torch.Tensor, y_tr: torch.Tensor, x_va: torch.Tensor, y_va: torch.Tensor,
                    cfg: SegmentConfig, seed: int) -> tuple[Segmenter, list[float]]:
    """Train a decoder (and the encoder copy when fine-tuning); keep the best-validation-Dice epoch."""
    torch.manual_seed(seed)
    enc = copy.deepcopy(encoder)
    seg = Segmenter(enc, cfg.freeze_encoder, cfg.width, channels=cfg.decoder_channels).to(cfg.device)
    params = list(seg.decoder.parameters())
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))  # a list when it comes from JSON or the command line
    opt = AdamW(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
    enc_opt = None if cfg.freeze_encoder else AdamW(enc.parameters(), lr=cfg.encoder_lr, betas=betas,
                                                    weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, curve = -float("inf"), None, []
    steps_per_epoch = max(1, len(x_tr) // cfg.batch_size)
    epochs = max(cfg.epochs, -(-cfg.min_steps // steps_per_epoch))
    eval_every = cfg.eval_every or max(1, epochs // 8)  # default: validate about 8 times, however many epochs
    bad = 0
    for epoch in range(epochs):
        seg.train()
        order = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2 and len(order) >= 2:  # batch-norm needs two samples
                continue
            loss = segmentation_loss(seg(x_tr[idx].to(cfg.device)), y_tr[idx].to(cfg.device), cfg.loss)
            opt.zero_grad()
            if enc_opt:
                enc_opt.zero_grad()
            loss.backward()
            opt.step()
            if enc_opt:
                enc_opt.step()
        if (epoch + 1) % eval_every and epoch + 1 != epochs:
            continue
        xv, yv = (x_va, y_va) if len(x_va) else (x_tr, y_tr)
        dice, _ = dice_iou(predict(seg, xv, cfg.batch_size, cfg.threshold, cfg.device), yv[:, 0].numpy() > 0.5)
        curve.append(float(dice.mean()))
        score = curve[-1] if cfg.monitor == "dice" else -_val_loss(seg, xv, yv, cfg)
        if score > best:
            best, bad = score, 0
            best_state = copy.deepcopy(seg.state_dict())
        else:
            bad += 1
            if cfg.patience is not None and bad >= cfg.patience:
                break
    if best_state is not None:
        seg.load_state_dict(best_state)
    return seg, curve


@torch.no_grad()
def _val_loss(seg: Segmenter, x: torch.Tensor, y: torch.Tensor, cfg: SegmentConfig) -> float:
    seg.eval()
    total = 0.0
    for i in range(0, len(x), cfg.batch_size):
        xb, yb = x[i : i + cfg.batch_size].to(cfg.device), y[i : i + cfg.batch_size].to(cfg.device)
        total += float(segmentation_loss(seg(xb), yb, cfg.loss)) * len(xb)
    return total / max(1, len(x))


def run_segment(loaded: LoadedModel, data: str | Path, out: str | Path | None, cfg: SegmentConfig) -> TaskResult:
    """Segment on every row of the table (one target per table)."""
    return run_segment_tasks(loaded, data, out, cfg, seg_task=None, by_task=False)


def run_segment_tasks(loaded: LoadedModel, data: str | Path, out: str | Path | None, cfg: SegmentConfig,
                      seg_task: str | None = None, by_task: bool = True) -> TaskResult:
    """Segment; a table with a ``task`` column (SynthCXR: pneumothorax / opacity) is evaluated per task.

    Each task is its own target (its rows' ``mask_path``), so a decoder never mixes two targets;
    metric names get the task as a prefix (``pneumothorax/10%/dice``).
    """
    model = loaded.model
    seg_task = seg_task if seg_task is not None else cfg.seg_task
    table = load_table(data, require=("mask_path", "patient_id"))
    size = cfg.image_size or image_size_of(model)
    groups: list[tuple[str, Table]] = [("", table)]
    if "task" in table.df.columns and (seg_task or by_task):
        names = [seg_task] if seg_task else sorted(t for t in table.df["task"].astype(str).unique() if t)
        groups = []
        for name in names:
            sub = table.df[table.df["task"].astype(str) == name].reset_index(drop=True)
            if sub.empty:
                raise ValueError(f"{table.folder}: no rows with task {name!r}")
            groups.append((f"{name}/", Table(sub, table.folder)))
    metrics: dict[str, Estimate] = {}
    runs: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    all_bad: list = []
    for prefix, tab in groups:
        m, r, c, bad = _segment_one(model, tab, size, cfg)
        metrics.update({prefix + k: v for k, v in m.items()})
        runs.update({prefix + k: v for k, v in r.items()})
        counts[prefix.rstrip("/") or "all"] = c
        all_bad += bad
    config = asdict(cfg) | {"image_size": size, "empty_mask_convention":
                            "all: an empty true mask scores 1 if the prediction is empty, else 0; "
                            "_pos: positive (non-empty mask) images only", "test_counts": counts,
                            "targets": [p.rstrip("/") for p, _ in groups]}
    result = TaskResult("segment", metrics, config, model_info(loaded), data_info(table, None, all_bad),
                        list(cfg.seeds), {"runs": runs})
    if out is not None:
        write_results(result, out)
    print(format_table(result))
    return result


def _segment_one(model: EvaluableModel, table: Table, size: int, cfg: SegmentConfig):
    x, y, kept, bad = load_pixels(table, size)
    if bad:
        print(f"skipped {len(bad)} unreadable image/mask rows of {len(table)} (first: row {bad[0][0]}: {bad[0][1]})")
    df = table.df.iloc[kept].reset_index(drop=True)
    idx = {s: np.flatnonzero(df["split"].to_numpy() == s) for s in ("train", "valid", "test")}
    if not len(idx["train"]) or not len(idx["test"]):
        raise ValueError(f"{table.folder}: segmentation needs train and test rows "
                         f"(found {len(idx['train'])} train, {len(idx['test'])} test)")
    y_te = y[idx["test"], 0].numpy() > 0.5
    pos = positives(y_te)
    metrics: dict[str, Estimate] = {}
    runs: dict[str, Any] = {}
    for frac in cfg.fractions:
        per: dict[str, list[Estimate]] = {"dice": [], "iou": [], "dice_pos": [], "iou_pos": []}
        for seed in cfg.seeds:
            pool = idx["train"]
            if cfg.balance_train:  # balanced first, then the label fraction of it (MGCA's order)
                pool = balanced_rows(y[pool, 0].flatten(1).amax(1).numpy() > 0.5, pool, seed)
            sub = pool[patient_subset(df.iloc[pool].reset_index(drop=True), frac, seed)]
            seg, curve = train_segmenter(model.image_encoder, x[sub], y[sub], x[idx["valid"]], y[idx["valid"]],
                                         cfg, seed)
            pred = predict(seg, x[idx["test"]], cfg.batch_size, cfg.threshold, cfg.device)
            dice, iou = dice_iou(pred, y_te)
            per["dice"].append(mean_ci(dice, cfg.n_boot, seed))
            per["iou"].append(mean_ci(iou, cfg.n_boot, seed))
            per["dice_pos"].append(mean_ci(dice[pos], cfg.n_boot, seed))
            per["iou_pos"].append(mean_ci(iou[pos], cfg.n_boot, seed))
            runs[f"{frac:g}/{seed}"] = {"train_rows": int(len(sub)), "val_dice_curve": curve,
                                        "test_dice": float(dice.mean())}
        pct = f"{frac * 100:g}%"
        for name, ests in per.items():
            metrics[f"{pct}/{name}"] = summarise_seeds(ests)
    counts = {"test_images": int(len(y_te)), "test_positives": int(pos.sum())}
    return metrics, runs, counts, bad
