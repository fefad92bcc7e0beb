"""Relations: does the model bind a finding to its place, size and polarity?

SynthCXR's ``relations/`` set has single-finding studies (``task`` = single) and binding studies
with two or three findings (``task`` = binding), and ``candidates.csv`` with, per study, the true
caption (``is_correct`` = 1) and foils (``contrast``): single studies get foils that differ in
exactly one attribute (side, zone, severity, negation); binding studies get foils that exchange
the sides (``swap_side``) or zones (``swap_zone``) of two findings (the same words, another
binding) and one that flips every side (``flip_sides``). With ``model.similarity`` as the score,
the metric per contrast type is the fraction of (image, foil) pairs whose true caption scores
strictly higher than the foil (a tie counts as half: a constant scorer gets 0.5, chance). Scores within float32
rounding of each other (``TIE_RTOL``) are a tie: a report and its swapped twin are the same words in another order,
and a model that cannot tell them apart (a bag of words) gives scores that differ only in summation order.
``all_foils`` is the fraction of images whose true caption beats every one of its foils;
``all_foils_single`` and ``all_foils_binding`` the same over each kind of study (when the table
has a ``task`` column). ``split`` (default ``test``) keeps the rows of one split: SynthCXR
splits the relations set half valid, half test, so designs are chosen on valid; ``None``: all.

Real data (``reclf prepare chest-imagenome``): the same metrics on Chest ImaGenome's gold triples, with
foils that move one finding to the other side (``side``), another lung level (``location``) or exchange
the regions of two findings (``swap_location``); built from the table's triples when the folder has no
``candidates.csv`` (``table_candidates``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from reclf.evaluate.common import data_info, load_table, model_info, report_bad
from reclf.evaluate.features import encode_images, encode_texts
from reclf.evaluate.loading import LoadedModel, image_size_of
from reclf.evaluate.results import TaskResult, format_table, per_item, write_results
from reclf.evaluate.stats import Estimate, mean_ci

CANDIDATE_COLUMNS = ("study_id", "text", "is_correct", "contrast")


@dataclass
class RelationsConfig:
    candidates: str = "candidates.csv"  # relative to the data folder
    score: str = "method"  # method | global | local
    image_size: int | None = None
    batch_size: int = 32
    n_boot: int = 1000
    seed: int = 0
    cache_dir: str | None = None
    split: str | None = "test"  # rows of this split only (SynthCXR: valid | test); None: all rows


def read_candidates(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no candidates file (SynthCXR writes relations/candidates.csv)")
    df = pd.read_csv(path, dtype={"study_id": str, "text": str, "contrast": str}, keep_default_na=False)
    missing = [c for c in CANDIDATE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(CANDIDATE_COLUMNS)}")
    bad = ~df["is_correct"].astype(str).isin(["0", "1", "True", "False", "true", "false"])
    if bad.any():
        row = int(df.index[bad][0])
        raise ValueError(f"{path}: row {row}: is_correct must be 0 or 1, got {df.loc[row, 'is_correct']!r}")
    df["is_correct"] = df["is_correct"].astype(str).isin(["1", "True", "true"])
    return df


def table_candidates(df: pd.DataFrame, path: Path, seed: int = 0) -> pd.DataFrame:
    """The candidates file when there is one; else, for a table of finding-anatomy-side triples (``reclf
    prepare chest-imagenome``), the foils built from its triples
    (:func:`reclf.data.sources.chest_imagenome.relation_candidates`: ``side``, ``location``, ``swap_location``)."""
    if path.is_file() or "annotations" not in df.columns:
        return read_candidates(path)
    from reclf.data.sources.chest_imagenome import candidates_frame, triples_from_annotations

    triples = {str(sid): triples_from_annotations(a) for sid, a in zip(df["study_id"], df["annotations"])}
    triples = {sid: t for sid, t in triples.items() if t}
    if not triples:
        return read_candidates(path)  # neither candidates nor triples: say which file is missing
    cands = candidates_frame(triples, seed)
    cands["is_correct"] = cands["is_correct"].astype(bool)
    return cands


#: scores this close (relative to the larger, or absolute below 1) are a tie: float32 sums of a few hundred terms
#: in another order differ by about 1e-7 relative
TIE_RTOL = 1e-5


def wins(true_score: float, foil_score: float) -> float:
    """1 if the true caption scores higher, 0.5 on a tie (within ``TIE_RTOL``), 0 otherwise."""
    if abs(true_score - foil_score) <= TIE_RTOL * max(1.0, abs(true_score), abs(foil_score)):
        return 0.5
    return 1.0 if true_score > foil_score else 0.0


def run_relations(loaded: LoadedModel, data: str | Path, out: str | Path | None, cfg: RelationsConfig) -> TaskResult:
    model = loaded.model
    split = None if cfg.split in (None, "", "all") else cfg.split
    table = load_table(data, splits=(split,) if split else None)
    cands = table_candidates(table.df, table.folder / cfg.candidates, cfg.seed)
    size = cfg.image_size or image_size_of(model)
    img, enc = encode_images(model, table.paths(), size, cfg.batch_size, cache_dir=cfg.cache_dir,
                             model_hash=loaded.sha256)
    report_bad(enc.bad, table)
    df = table.df.iloc[enc.kept].reset_index(drop=True)
    cands = cands[cands["study_id"].isin(set(df["study_id"].astype(str)))]  # only this split's captions
    texts = sorted(set(cands["text"]))
    text_index = {t: i for i, t in enumerate(texts)}
    txt = encode_texts(model, texts)
    fn = {"method": model.similarity, "global": model.global_similarity,
          "local": model.local_similarity}[cfg.score]
    if cfg.score == "local" and not model.has_local:
        raise ValueError(f"method {model.method} has no local score; use --score method")
    groups = dict(tuple(cands.groupby("study_id", sort=False)))
    per_contrast: dict[str, list[float]] = {}
    all_beaten: list[float] = []
    beaten_ids: list[str] = []
    task_of = dict(zip(df["study_id"].astype(str), df["task"].astype(str))) if "task" in df.columns else {}
    beaten_by_task: dict[str, list[float]] = {}
    ids_by_task: dict[str, list[str]] = {}
    rows: list[dict[str, Any]] = []
    no_true = missing = 0
    with torch.no_grad():
        for i, sid in enumerate(df["study_id"].astype(str)):
            g = groups.get(sid)
            if g is None:
                missing += 1
                continue
            true = g[g["is_correct"]]
            foils = g[~g["is_correct"]]
            if len(true) != 1 or foils.empty:
                no_true += 1
                continue
            idx = torch.as_tensor([text_index[t] for t in [true["text"].iloc[0], *foils["text"]]])
            s = fn(img.index(slice(i, i + 1)), txt.index(idx))[0].float().numpy()
            results = [wins(float(s[0]), float(f)) for f in s[1:]]
            for contrast, w, fs in zip(foils["contrast"], results, s[1:]):
                per_contrast.setdefault(contrast, []).append(w)
                rows.append({"study_id": sid, "contrast": contrast, "true": float(s[0]), "foil": float(fs), "win": w})
            all_beaten.append(float(all(w == 1.0 for w in results)))
            beaten_ids.append(sid)
            if sid in task_of:
                beaten_by_task.setdefault(task_of[sid], []).append(all_beaten[-1])
                ids_by_task.setdefault(task_of[sid], []).append(sid)
    if not all_beaten:
        raise ValueError(f"{table.folder}: no study has a true caption and at least one foil in {cfg.candidates}")
    if missing or no_true:
        print(f"relations: {missing} images without candidates, {no_true} without exactly one true caption "
              "and a foil (skipped)")
    metrics: dict[str, Estimate] = {}
    items: dict[str, Any] = {}
    for contrast in sorted(per_contrast):
        metrics[f"{contrast}"] = mean_ci(np.asarray(per_contrast[contrast]), cfg.n_boot, cfg.seed)
        ids = [f"{r['study_id']}/{k}" for k, r in enumerate(r for r in rows if r["contrast"] == contrast)]
        items[contrast] = per_item(ids, per_contrast[contrast])
    metrics["all_foils"] = mean_ci(np.asarray(all_beaten), cfg.n_boot, cfg.seed)
    items["all_foils"] = per_item(beaten_ids, all_beaten)
    for task in sorted(beaten_by_task):
        if task in ("single", "binding"):
            metrics[f"all_foils_{task}"] = mean_ci(np.asarray(beaten_by_task[task]), cfg.n_boot, cfg.seed)
            items[f"all_foils_{task}"] = per_item(ids_by_task[task], beaten_by_task[task])
    by_class: dict[str, float] = {}
    if "class" in df.columns:
        cls_of = dict(zip(df["study_id"].astype(str), df["class"].astype(str)))
        frame = pd.DataFrame(rows)
        frame["class"] = frame["study_id"].map(cls_of)
        by_class = {f"{c}/{k}": float(v) for (c, k), v in frame.groupby(["class", "contrast"])["win"].mean().items()}
    config = asdict(cfg) | {"image_size": size, "chance": 0.5}
    info = data_info(table, enc.kept, enc.bad) | {"skipped_no_candidates": missing, "skipped_incomplete": no_true,
                                                  "split": split or "all"}
    if task_of:
        info["studies_by_task"] = {t: len(v) for t, v in sorted(ids_by_task.items())}
    result = TaskResult("relations", metrics, config, model_info(loaded), info, [cfg.seed],
                        {"by_class_contrast": by_class, "per_item": items})
    if out is not None:
        write_results(result, out)
    print(format_table(result))
    return result
