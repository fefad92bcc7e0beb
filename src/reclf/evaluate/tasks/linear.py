"""Linear probe: a linear head on the frozen encoder's global feature.

The backbone (``model.image_encoder``) runs once in eval mode (batch-norm statistics frozen) and
its pooled feature ``image_encoder(x).global_`` is cached; every label fraction and seed reuses
it. Label fractions (1 / 10 / 100 %) are drawn over *patients* of the training split with a
generator seeded by (seed, fraction), so subsets never split a patient and are reproducible.
The head trains full-batch with AdamW and early stopping on the validation loss.

Protocol options (the field's, named in ``results.json``):
- ``label_set``: ``competition`` = CheXpert's 5 competition labels (Atelectasis, Cardiomegaly,
  Consolidation, Edema, Pleural Effusion; MGCA's and GLoRIA's set, the default for CheXpert data),
  ``all`` = every CheXpert label with both classes in train and test (the default elsewhere);
- ``uncertain``: what the probe does with a remaining ``-1``: ``ignore`` (masked out of loss and
  AUROC), ``ones`` / ``zeros`` (U-Ones / U-Zeros), ``gloria`` (U-Ones for Atelectasis, Edema, Pleural
  Effusion, U-Zeros for Cardiomegaly, Consolidation, as GLoRIA and MGCA);
- ``recipe``: ``cached`` (the fast path above) or ``mgca`` (MGCA's ``ssl_finetuner``: AdamW lr 5e-4,
  betas (0.9, 0.999), weight decay 1e-6, batch 48, up to 50 epochs, early stopping on the validation
  loss with patience 10, the best epoch tested; images resized to 256/224 of the input size,
  random crop + horizontal flip + brightness/contrast jitter in training, centre crop at test; the
  frozen backbone runs on every augmented batch, so it costs a backbone pass per image per epoch).
Metrics: macro AUROC over the labels for multi-label targets, accuracy (and macro-F1) for a
multi-class target; mean +- std over seeds, each with its bootstrap interval on the test split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reclf.evaluate.common import (
    choose_target,
    data_info,
    label_targets,
    load_table,
    model_info,
    patient_subset,
    report_bad,
    resolve_label_set,
)
from reclf.evaluate.features import backbone_features
from reclf.evaluate.loading import LoadedModel, image_size_of
from reclf.evaluate.metrics import accuracy, macro_auroc, macro_f1
from reclf.evaluate.optim import AdamW
from reclf.evaluate.results import TaskResult, format_table, write_results
from reclf.evaluate.stats import Estimate, bootstrap_ci, summarise_seeds


@dataclass
class LinearConfig:
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    target: str = "auto"  # auto | labels | class
    labels: list[str] | None = None  # explicit label columns (overrides label_set)
    label_set: str = "auto"  # auto (competition for CheXpert data, else all) | competition | all
    uncertain: str = "ignore"  # ignore | ones | zeros | gloria: the probe's policy for a remaining -1
    recipe: str = "cached"  # cached (full-batch on cached features) | mgca (MGCA's augmented mini-batch recipe)
    epochs: int = 50  # mgca recipe
    mgca_batch_size: int = 48
    mgca_lr: float = 5e-4
    mgca_weight_decay: float = 1e-6
    mgca_patience: int = 10
    lr: float = 1e-2
    weight_decay: float = 1e-4
    max_steps: int = 300
    eval_every: int = 10
    patience: int = 5  # evaluations without a better validation loss
    image_size: int | None = None
    batch_size: int = 32
    n_boot: int = 1000
    cache_dir: str | None = None


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


def _loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "class":
        return nn.functional.cross_entropy(logits, y.long())
    keep = ~torch.isnan(y)
    return nn.functional.binary_cross_entropy_with_logits(logits[keep], y[keep]) if keep.any() else logits.sum() * 0


def _augment(x: torch.Tensor, crop: int, gen: torch.Generator) -> torch.Tensor:
    """MGCA-style training view: random crop, horizontal flip, brightness/contrast jitter (seeded)."""
    n, _, h, w = x.shape
    out = torch.empty(n, x.shape[1], crop, crop)
    for i in range(n):
        t = int(torch.randint(0, h - crop + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - crop + 1, (1,), generator=gen))
        v = x[i, :, t : t + crop, left : left + crop]
        if torch.rand(1, generator=gen) < 0.5:
            v = v.flip(-1)
        if torch.rand(1, generator=gen) < 0.8:
            b, c = (torch.rand(2, generator=gen) * 0.8 + 0.6).tolist()  # factors in [0.6, 1.4]
            v = ((v - v.mean()) * c + v.mean()) * b
        out[i] = v.clamp(0, 1)
    return out


def mgca_probe(encoder: Any, table: Any, kept: np.ndarray, sub: np.ndarray, idx: dict[str, np.ndarray],
               y_all: torch.Tensor, kind: str, n_out: int, size: int, cfg: LinearConfig, seed: int) -> torch.Tensor:
    """MGCA's linear-probe recipe (see the module doc); returns the test logits of the best-validation epoch."""
    from reclf.evaluate.features import prepare_image

    big = int(round(size * 256 / 224))
    paths = [table.paths()[i] for i in kept]
    pix = torch.from_numpy(np.stack([prepare_image(p, big) for p in paths]))[:, None]
    off = (big - size) // 2
    centre = pix[:, :, off : off + size, off : off + size]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    encoder.eval()

    def feats(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([encoder(x[i : i + cfg.mgca_batch_size]).global_.float()
                              for i in range(0, len(x), cfg.mgca_batch_size)])

    head = nn.Linear(encoder.global_dim, n_out)
    opt = AdamW(head.parameters(), lr=cfg.mgca_lr, weight_decay=cfg.mgca_weight_decay)
    x_va, y_va = (feats(centre[idx["valid"]]), y_all[idx["valid"]]) if len(idx["valid"]) else (None, None)
    best, best_state, bad = float("inf"), None, 0
    for _ in range(cfg.epochs):
        order = sub[torch.randperm(len(sub), generator=gen).numpy()]
        for i in range(0, len(order), cfg.mgca_batch_size):
            b = order[i : i + cfg.mgca_batch_size]
            loss = _loss(head(feats(_augment(pix[b], size, gen))), y_all[b], kind)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if x_va is None or y_va is None:
            continue
        with torch.no_grad():
            v = float(_loss(head(x_va), y_va, kind))
        if v < best - 1e-6:
            best, best_state, bad = v, {k: t.clone() for k, t in head.state_dict().items()}, 0
        else:
            bad += 1
            if bad >= cfg.mgca_patience:
                break
    if best_state is not None:
        head.load_state_dict(best_state)
    with torch.no_grad():
        return head(feats(centre[idx["test"]]))


def run_linear(loaded: LoadedModel, data: str | Path, out: str | Path | None, cfg: LinearConfig) -> TaskResult:
    if cfg.recipe not in ("cached", "mgca"):
        raise ValueError(f"linear probe recipe {cfg.recipe!r}: choose cached or mgca")
    model = loaded.model
    table = load_table(data, require=("patient_id",))
    size = cfg.image_size or image_size_of(model)
    enc = backbone_features(model.image_encoder, table.paths(), size, cfg.batch_size, cache_dir=cfg.cache_dir,
                            model_hash=loaded.sha256)
    report_bad(enc.bad, table)
    df = table.df.iloc[enc.kept].reset_index(drop=True)
    feats = enc.tensors["global"].float()
    kind, names = choose_target(df, cfg.target, cfg.labels, cfg.label_set, cfg.uncertain)
    if kind == "labels":
        y_all = torch.as_tensor(label_targets(df, names, cfg.uncertain), dtype=torch.float32)
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
            if cfg.recipe == "mgca":
                logits = mgca_probe(model.image_encoder, table, enc.kept, sub, idx, y_all, kind, len(names), size,
                                    cfg, seed)
            else:
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
                            "label_set": resolve_label_set(df, cfg.labels, cfg.label_set),
                            "uncertain_policy": cfg.uncertain,
                            "feature_dim": int(feats.shape[1])}
    result = TaskResult("linear", metrics, config, model_info(loaded), data_info(table, enc.kept, enc.bad),
                        list(cfg.seeds), {"runs": per_run})
    if out is not None:
        write_results(result, out)
    print(format_table(result))
    return result
