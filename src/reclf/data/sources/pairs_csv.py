"""Any CSV of image/report pairs -> the canonical table.

Options: ``--csv`` (default ``<root>/pairs.csv``), ``--image-column`` (default ``image``), ``--report-column``
(default ``report``), optional ``--patient-column``, ``--split-column`` and ``--id-column``. Image paths are
relative to ``--root`` (or absolute). Reports are sectioned with :mod:`reclf.data.sections` (a report without
headers becomes the findings). Without a split column the split is seeded and patient-level, 70/15/15 (the
patient is the row when there is no patient column). Split values ``validate``/``val``/``validation`` -> valid.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reclf.data.sections import extract_sections
from reclf.data.sources.common import (
    DropLog,
    PrepareOptions,
    SourceLayoutError,
    SourceTable,
    canonical_frame,
    read_csv_counting_bad,
    require_columns,
)
from reclf.data.studies import patient_split

SPLIT_ALIASES = {
    "train": "train",
    "valid": "valid",
    "val": "valid",
    "validate": "valid",
    "validation": "valid",
    "test": "test",
}


def parse(opts: PrepareOptions) -> SourceTable:
    root = Path(opts.root).resolve()
    drops = DropLog(opts.strict)
    csv = Path(opts.get("csv", root / "pairs.csv"))
    if not csv.is_absolute() and not csv.is_file():
        csv = root / csv
    if not csv.is_file():
        raise SourceLayoutError(f"expected the pairs CSV {csv}; pass --csv FILE")
    raw = read_csv_counting_bad(csv, drops)
    image_col = opts.get("image_column", "image")
    report_col = opts.get("report_column", "report")
    patient_col, split_col, id_col = (opts.get(k) for k in ("patient_column", "split_column", "id_column"))
    require_columns(raw, [c for c in (image_col, report_col, patient_col, split_col, id_col) if c], csv)
    n_read = len(raw)
    line = pd.Series(raw.attrs.get("lines") or [i + 2 for i in raw.index], index=raw.index)
    image = raw[image_col].astype(str).str.strip()
    report = raw[report_col].astype(str)
    bad = image == ""
    drops.bad(
        "malformed_csv_row",
        f"{csv.name}: row without an image path",
        int(bad.sum()),
        [f"line {n}" for n in line[bad][:5]],
    )
    sections = [extract_sections(t) for t in report]
    empty = pd.Series([s.empty for s in sections], index=raw.index) & ~bad
    drops.bad("report_no_sections", "an empty report", int(empty.sum()), [f"line {n}" for n in line[empty]])
    keep = ~(bad | empty)
    ids = (
        raw[id_col].astype(str).str.strip()
        if id_col
        else pd.Series([f"row{i:07d}" for i in raw.index], index=raw.index)
    )
    dup = ids.duplicated() & keep
    dup_where = [f"{i} (line {n})" for i, n in zip(ids[dup], line[dup])]
    drops.bad("duplicate_id", "an id listed twice", int(dup.sum()), dup_where)
    keep &= ~dup
    patients = raw[patient_col].astype(str).str.strip() if patient_col else ids
    if split_col:
        split = raw[split_col].astype(str).str.strip().str.lower().map(SPLIT_ALIASES)
        unknown = split.isna() & keep
        drops.bad(
            "unknown_split",
            f"a {split_col} value that is not train/valid/test",
            int(unknown.sum()),
            raw.loc[unknown, split_col],
        )
        keep &= ~unknown
    else:
        assign = patient_split(patients[keep], (0.7, 0.15, 0.15), seed=opts.seed)
        split = patients.map(assign)
    sec = [s for s, k in zip(sections, keep) if k]
    df = canonical_frame(
        int(keep.sum()),
        study_id=ids[keep],
        patient_id=patients[keep],
        report=[s.text for s in sec],
        findings=[s.findings for s in sec],
        impression=[s.impression for s in sec],
        split=split[keep],
        source_path=[p if Path(p).is_absolute() else str(root / p) for p in image[keep]],
    )
    df["source"] = "pairs-csv"
    return SourceTable("pairs-csv", df, drops, rows_read=n_read, info={"csv": str(csv)})
