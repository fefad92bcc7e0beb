"""Linear probe: a linear head on the frozen encoder's global feature.

The backbone (``model.image_encoder``) runs once in eval mode (batch-norm statistics frozen) and
its pooled feature ``image_encoder(x).global_`` is cached; every label fraction and seed reuses
it. Label fractions (1 / 10 / 100 %) are drawn over *patients* of the training split with a
generator seeded by (seed, fraction), so subsets never split a patient and are reproducible.
The head trains full-batch with AdamW and early stopping on the validation loss.
Metrics: macro AUROC over the labels for multi-label targets, accuracy (and macro-F1) for a
multi-class target; mean +- std over seeds, each with its bootstrap interval on the test split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from reclf.data.studies import CHEXPERT_LABELS
from reclf.evaluate.common import data_info, load_table, model_info, report_bad
from reclf.evaluate.features import backbone_features
from reclf.evaluate.loading import LoadedModel, image_size_of
from reclf.evaluate.metrics import accuracy, macro_auroc, macro_f1
from reclf.evaluate.optim import AdamW
from reclf.evaluate.results import TaskResult, format_table, write_results
from reclf.evaluate.stats import Estimate, bootstrap_ci, summarise_seeds
from reclf.utils.seed import rng


@dataclass
class LinearConfig:
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    target: str = "auto"  # auto | labels | class
    labels: list[str] | None = None  # None: every CheXpert label with both classes in train and test
    lr: float = 1e-2
    weight_decay: float = 1e-4
    max_steps: int = 300
    eval_every: int = 10
    patience: int = 5  # evaluations without a better validation loss
    image_size: int | None = None
    batch_size: int = 32
    n_boot: int = 1000
    cache_dir: str | None = None


def patient_subset(df: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Row indices of a seeded ``fraction`` of the patients in ``df`` (at least one patient)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction {fraction} must be in (0, 1]")
    patients = np.asarray(sorted(df["patient_id"].astype(str).unique()))
    if fraction >= 1:
        return np.arange(len(df))
    n = max(1, int(math.ceil(fraction * len(patients))))
    chosen = set(patients[rng(seed, "label-fraction", int(round(fraction * 1e6))).permutation(len(patients))[:n]])
    return np.flatnonzero(df["patient_id"].astype(str).isin(chosen).to_numpy())


def label_targets(df: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """``[N, L]`` targets: 1 / 0, NaN for uncertain (-1), which is masked out of loss and AUROC.

    Unmentioned (empty) labels count as negative, the CheXpert convention.
    """
    y = df[labels].to_numpy(dtype=float)
    y = np.where(np.isnan(y), 0.0, y)
    return np.where(y < 0, np.nan, y)


def choose_target(df: pd.DataFrame, cfg: LinearConfig) -> tuple[str, list[str]]:
    """Which target to probe: the label columns (multi-label) or the ``class`` column (multi-class)."""
    def usable(split: str, lab: str) -> bool:
        y = label_targets(df[df["split"] == split], [lab])[:, 0]
        return bool(np.nansum(y == 1) and np.nansum(y == 0))

    labels = cfg.labels or [lab for lab in CHEXPERT_LABELS if lab in df.columns and usable("train", lab)
                            and usable("test", lab)]
    has_class = "class" in df.columns and df["class"].astype(str).str.len().gt(0).all() and \
        df["class"].nunique() > 1
    if cfg.target == "labels" or (cfg.target == "auto" and labels):
        if not labels:
            raise ValueError("no label column has both positives and negatives in train and test")
        return "labels", labels
    if cfg.target in ("class", "auto") and has_class:
        return "class", sorted(df["class"].astype(str).unique())
    raise ValueError("the table has neither usable label columns nor a 'class' column with 2+ classes")


def train_head(x_tr: torch.Tensor, y_tr: torch.Tensor, x_va: torch.Tensor, y_va: torch.Tensor, kind: str,
               n_out: int, cfg: LinearConfig, seed: int) -> nn.Linear:
    """Full-batch AdamW on a linear head, early-stopped on the validation loss; returns the best head."""
    torch.manual_seed(seed)
    head = nn.Linear(x_tr.shape[1], n_out)
    opt = AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = head(x)
        if kind == "class":
            return nn.functional.cross_entropy(logits, y.long())
        keep = ~torch.isnan(y)
        return nn.functional.binary_cross_entropy_with_logits(logits[keep], y[keep])

    best, best_state, bad = float("inf"), None, 0
    for step in range(1, cfg.max_steps + 1):
        opt.zero_grad()
        loss_fn(x_tr, y_tr).backward()
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            with torch.no_grad():
                v = float(loss_fn(x_va, y_va)) if len(x_va) else -step
            if v < best - 1e-6:
                best, best_state, bad = v, {k: t.clone() for k, t in head.state_dict().items()}, 0
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
    if best_state is not None:
        head.load_state_dict(best_state)
    return head


def run_linear(loaded: LoadedModel, data: str | Path, out: str | Path | None, cfg: LinearConfig) -> TaskResult:
    model = loaded.model
    table = load_table(data, require=("patient_id",))
    size = cfg.image_size or image_size_of(model)
    enc = backbone_features(model.image_encoder, table.paths(), size, cfg.batch_size, cache_dir=cfg.cache_dir,
                            model_hash=loaded.sha256)
    report_bad(enc.bad, table)
    df = table.df.iloc[enc.kept].reset_index(drop=True)
    feats = enc.tensors["global"].float()
    kind, names = choose_target(df, cfg)
    if kind == "labels":
        y_all = torch.as_tensor(label_targets(df, names), dtype=torch.float32)
    else:
        y_all = torch.as_tensor([names.index(c) for c in df["class"].astype(str)], dtype=torch.float32)
    idx = {s: np.flatnonzero(df["split"].to_numpy() == s) for s in ("train", "valid", "test")}
    if not len(idx["train"]) or not len(idx["test"]):
        raise ValueError(f"{table.folder}: the linear probe needs train and test rows "
                         f"(found {len(idx['train'])} train, {len(idx['test'])} test)")
    train_df = df.iloc[idx["train"]].reset_index(drop=True)
    metrics: dict[str, Estimate] = {}
    per_run: dict[str, Any] = {}
    metric_name = "auroc" if kind == "labels" else "accuracy"
    for frac in cfg.fractions:
        ests, f1s = [], []
        for seed in cfg.seeds:
            local = patient_subset(train_df, frac, seed)
            sub = idx["train"][local]
            mu = feats[sub].mean(0)
            sd = feats[sub].std(0).clamp_min(1e-6) if len(sub) > 1 else torch.ones_like(mu)
            norm = (feats - mu) / sd
            head = train_head(norm[sub], y_all[sub], norm[idx["valid"]], y_all[idx["valid"]], kind,
                              len(names), cfg, seed)
            with torch.no_grad():
                logits = head(norm[idx["test"]])
            y_te = y_all[idx["test"]].numpy()
            if kind == "labels":
                est = bootstrap_ci(macro_auroc, y_te, torch.sigmoid(logits).numpy(), n_boot=cfg.n_boot, seed=seed)
            else:
                pred = logits.argmax(1).numpy()
                est = bootstrap_ci(accuracy, y_te, pred, n_boot=cfg.n_boot, seed=seed)
                f1s.append(bootstrap_ci(lambda a, b: macro_f1(a, b, labels=np.arange(len(names))), y_te, pred,
                                        n_boot=cfg.n_boot, seed=seed))
            ests.append(est)
            per_run[f"{frac:g}/{seed}"] = {"train_rows": int(len(sub)), "value": est.value,
                                           "train_patients": int(train_df.iloc[local]["patient_id"].nunique())}
        pct = f"{frac * 100:g}%"
        metrics[f"{pct}/{metric_name}"] = summarise_seeds(ests)
        if f1s:
            metrics[f"{pct}/macro_f1"] = summarise_seeds(f1s)
    config = asdict(cfg) | {"image_size": size, "target_kind": kind, "targets": names,
                            "feature_dim": int(feats.shape[1])}
    result = TaskResult("linear", metrics, config, model_info(loaded), data_info(table, enc.kept, enc.bad),
                        list(cfg.seeds), {"runs": per_run})
    if out is not None:
        write_results(result, out)
    print(format_table(result))
    return result
