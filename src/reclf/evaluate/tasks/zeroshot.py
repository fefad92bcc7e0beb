"""Zero-shot classification with versioned prompt files.

Multi-class (5x200 style, the table's ``class`` column): every image is scored against every
prompt of every class; a class's score is the mean (or max, GLoRIA) over its prompts; the
prediction is the best class. With ``prompts_per_class`` K, each class uses K prompts drawn
from its list by a generator seeded by (seed, class index), GLoRIA's protocol (K = 5) made
reproducible; the drawn prompts are listed in ``results.json`` (``extra.prompts``) with the prompt
file's name and version (``config.prompt_file``). Scores are computed by each available rule:
``global`` (cosine of global embeddings), ``local`` (the method's word-region matcher),
``fused`` (the mean of global and local after z-normalising each prompt's scores over *all* the
images: statistics of the whole image set, computed once on the full score matrix, so they do not
depend on ``chunk``; GLoRIA itself averages the raw scores and z-normalises the class scores over the
images) and ``method`` (``model.similarity``, the method's own per-pair score: for fused methods the
mean of the global and local InfoNCE logits).

Binary (``--binary``): for each label with a positive/negative prompt pair in the prompt file,
p(label) = softmax over ("X", "no X") of the mean prompt scores; AUROC per label and macro.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reclf.data.prompts import PromptSet, load_prompts, match_classes, sample_prompts
from reclf.evaluate.common import data_info, load_table, model_info, report_bad
from reclf.evaluate.features import encode_images, encode_texts, similarity_matrix
from reclf.evaluate.loading import LoadedModel, image_size_of
from reclf.evaluate.metrics import accuracy, auroc, macro_auroc, macro_f1
from reclf.evaluate.results import TaskResult, format_table, per_item, write_results
from reclf.evaluate.stats import Estimate, bootstrap_ci
from reclf.methods.inference import (  # noqa: F401  (class_scores, prompt_scores: re-exported)
    class_score_table,
    class_scores,
    length_bias,
    prompt_score_table,
    prompt_scores,
    score_modes,
)
from reclf.methods.interface import EvaluableModel


@dataclass
class ZeroShotConfig:
    prompts: str = "auto"  # a YAML path or built-in name; auto: by the table's source (synthcxr or chexpert)
    prompts_per_class: int | None = None  # None: every prompt (GLoRIA samples 5, MedCLIP 10, CXR-CLIP all)
    reduce: str = "mean"  # mean | max over a class's prompts (GLoRIA: max of the fused score)
    binary: bool = False  # also (or, without a class column, only) the binary pos/neg tasks
    split: str | None = None  # None: every row of the table
    image_size: int | None = None  # None: the model's own
    batch_size: int = 32
    chunk: int = 64
    temperature: float = 0.1  # softmax temperature of the binary pos/neg probability
    n_boot: int = 1000
    seed: int = 0
    cache_dir: str | None = None


def pick_prompt_file(spec: str, classes: list[str], source: str = "") -> PromptSet:
    """``spec`` as given, or for ``auto`` the built-in file of the table's source: SynthCXR's vocabulary for
    ``source == "synthcxr"``, CheXpert's (radiologists' wording) for real data, then whichever fits."""
    if spec != "auto":
        return load_prompts(spec)
    errors = []
    order = ("synthcxr", "chexpert") if source == "synthcxr" else ("chexpert", "synthcxr")
    for name in order:
        try:
            ps = load_prompts(name)
            if not classes or match_classes(classes, ps):
                return ps
        except (FileNotFoundError, ValueError) as exc:
            errors.append(str(exc))
    raise ValueError(f"no built-in prompt file fits the classes {classes}: {errors[-1] if errors else ''}")


def choose_prompts(classes: list[str], ps: PromptSet, per_class: int | None, seed: int) -> dict[str, list[str]]:
    """``{class: prompts}`` in ``classes`` order: each class's prompts in ``ps`` (names matched by
    :func:`reclf.data.prompts.match_classes`), ``per_class`` of them drawn with seed ``seed + class index``."""
    mapping = match_classes(classes, ps)
    return {c: sample_prompts(ps.classes[mapping[c]], per_class, seed + ci) for ci, c in enumerate(classes)}


def multiclass_metrics(per_mode: dict[str, torch.Tensor], y: np.ndarray, ids: Any, n_classes: int, n_boot: int,
                       seed: int, extra: dict[str, Any]) -> dict[str, Estimate]:
    """Accuracy and macro F1 (bootstrap intervals) of the best class by each rule, chance, and in ``extra`` the
    confusion matrices and the per-item hits; ``y`` are class indices, ``ids`` name the items."""
    metrics: dict[str, Estimate] = {}
    extra.setdefault("confusion", {})
    for mode, s in per_mode.items():
        pred = s.argmax(1).numpy()
        metrics[f"{mode}/accuracy"] = bootstrap_ci(accuracy, y, pred, n_boot=n_boot, seed=seed)
        extra.setdefault("per_item", {})[f"{mode}/accuracy"] = per_item(ids, pred == y)
        metrics[f"{mode}/macro_f1"] = bootstrap_ci(
            lambda a, b: macro_f1(a, b, labels=np.arange(n_classes)), y, pred, n_boot=n_boot, seed=seed)
        conf = np.zeros((n_classes, n_classes), dtype=int)
        np.add.at(conf, (y, pred), 1)
        extra["confusion"][mode] = conf.tolist()
    metrics["chance/accuracy"] = Estimate(1.0 / n_classes, float("nan"), float("nan"), len(y))
    return metrics


def run_zeroshot(loaded: LoadedModel, data: str | Path, out: str | Path | None, cfg: ZeroShotConfig) -> TaskResult:
    model = loaded.model
    table = load_table(data, (cfg.split,) if cfg.split else None)
    has_class = "class" in table.df.columns and (table.df["class"].astype(str).str.len() > 0).any()
    if not has_class and not cfg.binary:
        raise ValueError(f"{table.folder}: no 'class' column for multi-class zero-shot; pass --binary for "
                         "the positive/negative prompt tasks on the label columns")
    if has_class:
        table.df = table.df[table.df["class"].astype(str).str.len() > 0].reset_index(drop=True)
    size = cfg.image_size or image_size_of(model)
    img, enc = encode_images(model, table.paths(), size, cfg.batch_size, cache_dir=cfg.cache_dir,
                             model_hash=loaded.sha256)
    report_bad(enc.bad, table)
    df = table.df.iloc[enc.kept].reset_index(drop=True)
    metrics: dict[str, Estimate] = {}
    extra: dict[str, Any] = {}
    classes = sorted(df["class"].astype(str).unique()) if has_class else []
    sources = set(table.df["source"].astype(str)) if "source" in table.df.columns else set()
    ps = pick_prompt_file(cfg.prompts, classes if has_class else [], "synthcxr" if sources == {"synthcxr"} else "")
    config = asdict(cfg) | {"prompt_file": ps.describe(), "prompt_file_version": ps.version,
                            "prompt_sampling": f"{cfg.prompts_per_class or 'all'} per class, "
                                               f"seed {cfg.seed} + class index",
                            "image_size": size}

    if has_class:
        prompts = choose_prompts(classes, ps, cfg.prompts_per_class, cfg.seed)
        extra["prompts"] = prompts
        y = np.asarray([classes.index(c) for c in df["class"].astype(str)])
        scored = prompt_score_table(model, img, prompts, cfg.chunk)
        per_mode = {rule: class_scores(s, scored.owner, len(classes), cfg.reduce) for rule, s in scored.scores.items()}
        extra["classes"] = classes
        extra["length_bias"] = length_bias(scored.prompts, scored.scores)
        metrics.update(multiclass_metrics(per_mode, y, df["study_id"], len(classes), cfg.n_boot, cfg.seed, extra))

    if cfg.binary:
        metrics.update(_binary(model, img, df, ps, cfg, extra))

    result = TaskResult("zeroshot", metrics, config, model_info(loaded), data_info(table, enc.kept, enc.bad),
                        [cfg.seed], extra)
    if out is not None:
        write_results(result, out)
    print(format_table(result))
    return result


def _binary(model: EvaluableModel, img: Any, df: Any, ps: PromptSet, cfg: ZeroShotConfig,
            extra: dict) -> dict[str, Estimate]:
    labels = [lab for lab in ps.binary if lab in df.columns]
    if not labels:
        raise ValueError(f"none of the binary labels {list(ps.binary)} of {ps.path} is a column of the data")
    metrics: dict[str, Estimate] = {}
    modes = score_modes(model)
    for mode, fn in modes.items():
        ys, ps_, used = [], [], []
        for lab in labels:
            pos, neg = ps.binary[lab]
            y = df[lab].to_numpy(dtype=float)
            y = np.where(np.isnan(y), 0.0, y)  # unmentioned = negative (CheXpert convention); -1 dropped
            keep = y >= 0
            if len(np.unique(y[keep])) < 2:
                continue
            s = similarity_matrix(fn, img, encode_texts(model, pos + neg), cfg.chunk)
            sp, sn = s[:, : len(pos)].mean(1), s[:, len(pos) :].mean(1)
            prob = torch.softmax(torch.stack([sp, sn], 1) / cfg.temperature, 1)[:, 0].numpy()
            metrics[f"binary/{mode}/{lab}/auroc"] = bootstrap_ci(auroc, y[keep], prob[keep], n_boot=cfg.n_boot,
                                                                 seed=cfg.seed)
            ys.append(np.where(keep, y, np.nan))
            ps_.append(prob)
            used.append(lab)
        if used:
            Y, P = np.stack(ys, 1), np.stack(ps_, 1)
            metrics[f"binary/{mode}/macro_auroc"] = bootstrap_ci(macro_auroc, Y, P, n_boot=cfg.n_boot,
                                                                 seed=cfg.seed)
            extra.setdefault("binary_labels", used)
    return metrics
