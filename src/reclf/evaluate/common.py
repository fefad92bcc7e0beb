"""What every task shares: reading its study table, describing the model and data, the out folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reclf.evaluate.loading import LoadedModel


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
    return {
        "label": loaded.label,
        "path": loaded.path,
        "weights": loaded.weights_path,
        "sha256": loaded.sha256,
        "method": getattr(m, "method", None),
        "has_local": bool(getattr(m, "has_local", False)),
        "config": getattr(m, "config", None),
    }


def data_info(table: Table, kept: np.ndarray | None = None, bad: list | None = None) -> dict[str, Any]:
    bad = bad or []
    info: dict[str, Any] = {"path": str(table.folder), "rows": len(table), "used": int(len(table) if kept is None
                                                                                      else len(kept))}
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
