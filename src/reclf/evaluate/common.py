"""What every task shares: reading its study table, describing the model and data, the out folder, the report
text as training built it (``report_texts``), and the label targets and patient-level label fractions of the
trained probes (linear, segmentation, supervised ceiling)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reclf.config import run_config_fingerprint
from reclf.data.studies import CHEXPERT_LABELS
from reclf.evaluate.loading import LoadedModel
from reclf.methods.interface import EvaluableModel
from reclf.utils.seed import rng


@dataclass
class Table:
    """A study table with absolute image (and mask) paths."""

    df: pd.DataFrame
    folder: Path

    def paths(self, column: str = "image_path") -> list[Path]:
        return [self.folder / p for p in self.df[column].astype(str)]

    def __len__(self) -> int:
        return len(self.df)


def load_table(folder: str | Path, splits: tuple[str, ...] | None = None, require: tuple[str, ...] = ()) -> Table:
    """Read the canonical study table in ``folder`` (optionally only some splits) and check columns."""
    from reclf.data.studies import read_studies

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--data {folder}: no such folder (generate SynthCXR with `reclf synth --out DIR`)")
    df = read_studies(folder)
    for col in require:
        if col not in df.columns:
            raise ValueError(f"{folder}: the study table has no {col!r} column, which this task needs")
    if splits is not None:
        df = df[df["split"].isin(splits)]
        if df.empty:
            raise ValueError(f"{folder}: no rows in split(s) {list(splits)}")
    return Table(df.reset_index(drop=True), folder)


def model_info(loaded: LoadedModel) -> dict[str, Any]:
    m = loaded.model
    sections = model_sections(m)
    return {
        "label": loaded.label,
        "path": loaded.path,
        "weights": loaded.weights_path,
        "sha256": loaded.sha256,
        "method": m.method,
        "has_local": bool(m.has_local),
        "config": m.config,
        "sections": sections,
        "section_rule_sha256": section_rule_sha256(sections),
        # the recipe of the run that trained it (reclf.config.config_fingerprint of its config.yaml); None: unknown
        "config_fingerprint": run_config_fingerprint(loaded.path),
    }


def text_sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def items_sha256(ids: Any) -> str:
    """The hash of an ordered list of item ids (one per line): which items a number was computed on."""
    return text_sha256("\n".join(str(i) for i in ids))


def section_rule_sha256(sections: list[str]) -> str:
    """The report section rule as a hash: the sections the model reads, and the code that extracts and cleans
    them (``reclf.data.sections``, ``reclf.data.reports``). Any change of either changes the hash."""
    import json

    from reclf.data import reports
    from reclf.data import sections as section_code

    code = "".join(Path(mod.__file__).read_text(encoding="utf-8") for mod in (section_code, reports)
                   if mod.__file__)
    return text_sha256(json.dumps(list(sections)) + "\n" + code)


def data_info(table: Table, kept: np.ndarray | None = None, bad: list | None = None) -> dict[str, Any]:
    """The data of a result: folder, rows, rows used, bad rows (with reasons), the hash of the ids of the rows used
    (``split_list_sha256``: the exact evaluation list) and the table's ``source`` values."""
    bad = bad or []
    info: dict[str, Any] = {"path": str(table.folder), "rows": len(table), "used": int(len(table) if kept is None
                                                                                      else len(kept))}
    ids = table.df["study_id"].astype(str)
    info["split_list_sha256"] = items_sha256(ids if kept is None else ids.iloc[np.asarray(kept, dtype=int)])
    if "source" in table.df.columns:
        info["sources"] = sorted(set(table.df["source"].astype(str)) - {"", "nan"})
    info["bad_rows"] = len(bad)
    if bad:
        info["bad_examples"] = [{"row": int(r), "study_id": str(table.df.iloc[int(r)]["study_id"]), "reason": why}
                                for r, why in bad[:20]]
    return info


def report_bad(bad: list, table: Table, what: str = "images") -> None:
    """Say how many rows were skipped (never silently)."""
    if bad:
        first = bad[0]
        print(f"skipped {len(bad)} unreadable {what} of {len(table)} in {table.folder} "
              f"(first: row {first[0]}: {first[1]})")


# ---------------------------------------------------------------------------------------------
# targets and label fractions of the trained probes


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


COMPETITION_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
U_POLICIES = ("ignore", "ones", "zeros", "gloria")
_GLORIA_U = {"Atelectasis": 1.0, "Edema": 1.0, "Pleural Effusion": 1.0, "Cardiomegaly": 0.0, "Consolidation": 0.0}


def label_targets(df: pd.DataFrame, labels: list[str], uncertain: str = "ignore") -> np.ndarray:
    """``[N, L]`` targets: 1 / 0, and for uncertain (-1) the ``uncertain`` policy (``ignore``: NaN, masked
    out of loss and AUROC; ``gloria`` ignores -1 of labels it has no rule for).

    Unmentioned (empty) labels count as negative, the CheXpert convention.
    """
    if uncertain not in U_POLICIES:
        raise ValueError(f"uncertain={uncertain!r}: choose one of {U_POLICIES}")
    y = df[labels].to_numpy(dtype=float)
    y = np.where(np.isnan(y), 0.0, y)
    for j, lab in enumerate(labels):
        fill = {"ones": 1.0, "zeros": 0.0, "gloria": _GLORIA_U.get(lab, np.nan)}.get(uncertain, np.nan)
        y[:, j] = np.where(y[:, j] < 0, fill, y[:, j])
    return y


def choose_target(df: pd.DataFrame, target: str = "auto", labels: list[str] | None = None,
                  label_set: str = "auto", uncertain: str = "ignore") -> tuple[str, list[str]]:
    """Which target to probe: the label columns (multi-label) or the ``class`` column (multi-class).

    ``target``: auto | labels | class; ``labels``: explicit label columns (override ``label_set``);
    ``label_set``: see :func:`resolve_label_set`; ``uncertain``: the policy of :func:`label_targets`.
    """
    def usable(split: str, lab: str) -> bool:
        y = label_targets(df[df["split"] == split], [lab], uncertain)[:, 0]
        return bool(np.nansum(y == 1) and np.nansum(y == 0))

    explicit = labels
    pool = COMPETITION_LABELS if resolve_label_set(df, explicit, label_set) == "competition" else CHEXPERT_LABELS
    labels = explicit or [lab for lab in pool if lab in df.columns and usable("train", lab)
                            and usable("test", lab)]
    has_class = "class" in df.columns and df["class"].astype(str).str.len().gt(0).all() and \
        df["class"].nunique() > 1
    if target == "labels" or (target == "auto" and labels):
        if not labels:
            raise ValueError("no label column has both positives and negatives in train and test")
        return "labels", labels
    if target in ("class", "auto") and has_class:
        return "class", sorted(df["class"].astype(str).unique())
    raise ValueError("the table has neither usable label columns nor a 'class' column with 2+ classes")


def resolve_label_set(df: pd.DataFrame, labels: list[str] | None = None, label_set: str = "auto") -> str:
    """``auto`` -> ``competition`` for CheXpert tables (``source`` column), ``all`` otherwise."""
    if labels:
        return "explicit"
    if label_set not in ("auto", "competition", "all"):
        raise ValueError(f"label_set={label_set!r}: choose auto, competition or all")
    if label_set != "auto":
        return label_set
    sources = set(df["source"].astype(str)) if "source" in df.columns else set()
    return "competition" if sources == {"chexpert"} else "all"


def model_sections(model: EvaluableModel) -> list[str]:
    """The report sections the model was trained on (``text_encoder.sections``; findings + impression)."""
    from reclf.data.reports import DEFAULT_SECTIONS

    text = model.config.get("text_encoder")
    sections = text.get("sections") if isinstance(text, dict) else None
    return list(sections or DEFAULT_SECTIONS)


def report_texts(df: Any, model: EvaluableModel) -> list[str]:
    """Each row's report text exactly as training builds it (``reclf.data.datasets.study_report`` with the
    model's sections): the one section rule for pretraining and every evaluation that reads reports."""
    from reclf.data.datasets import study_report

    sections = model_sections(model)
    return [study_report(row, sections) for _, row in df.iterrows()]
