"""RSNA Pneumonia Detection: ``stage_2_train_labels.csv`` (+ detailed class info) + DICOMs -> table, box masks.

The labels file has one row per *box* (several per patient) and one box-less row for a negative patient. A patient
is positive when any of its rows has ``Target = 1``; its boxes are kept as JSON ``[[x, y, width, height], ...]``
and rasterised to a mask for segmentation (MGCA's box masks). Labels: ``Pneumonia`` and ``Lung Opacity`` = any box;
``class`` is the detailed class (``Lung Opacity`` / ``Normal`` / ``No Lung Opacity / Not Normal``) when
``stage_2_detailed_class_info.csv`` is present, else ``Lung Opacity`` / ``No Lung Opacity``. The split is
seeded and patient-level, 70/15/15 (one image per patient in RSNA).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from reclf.data.sources.common import (
    DropLog,
    PrepareOptions,
    SourceTable,
    canonical_frame,
    dumps_boxes,
    find_file,
    read_csv_counting_bad,
    require_columns,
)
from reclf.data.studies import patient_split

LABEL_FILE = "stage_2_train_labels.csv"
CLASS_FILE = "stage_2_detailed_class_info.csv"
IMAGE_DIRS = ("stage_2_train_images", "stage_1_train_images")
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)


def read_labels(path: Path, drops: DropLog) -> pd.DataFrame:
    """Per-patient table: ``patient_id, positive, boxes (list), n_rows``; malformed rows counted and dropped."""
    df = read_csv_counting_bad(path, drops)
    require_columns(df, ["patientId", "x", "y", "width", "height", "Target"], path)
    pid = df["patientId"].astype(str).str.strip()
    target = pd.to_numeric(df["Target"], errors="coerce")
    box = df[["x", "y", "width", "height"]].apply(pd.to_numeric, errors="coerce")
    has_box = box.notna().all(axis=1)
    no_box = df[["x", "y", "width", "height"]].apply(lambda c: c.astype(str).str.strip() == "").all(axis=1)
    good = (
        (pid != "")
        & target.isin([0, 1])
        & (((target == 1) & has_box & (box["width"] > 0) & (box["height"] > 0)) | ((target == 0) & no_box))
    )
    drops.bad(
        "malformed_csv_row",
        f"{path.name}: row without a patientId, with a Target other than 0/1, or whose box does not match Target",
        int((~good).sum()),
        [f"row {i + 2}" for i in df.index[~good][:5]],
    )
    rows = pd.DataFrame({"patient_id": pid, "target": target, **{k: box[k] for k in box.columns}})[good]
    grouped = rows.groupby("patient_id", sort=True)
    per = pd.DataFrame(
        {"n_rows": grouped.size(), "any_pos": grouped["target"].max(), "any_neg": grouped["target"].min()}
    )
    conflicting = (per["any_pos"] == 1) & (per["any_neg"] == 0)
    drops.bad(
        "conflicting_target",
        "a patient with both Target=0 and Target=1 rows",
        int(conflicting.sum()),
        per.index[conflicting][:5],
    )
    per = per[~conflicting]
    boxed = rows[rows["target"] == 1]
    boxes = boxed.groupby("patient_id")[["x", "y", "width", "height"]].apply(lambda g: g.to_numpy().tolist())
    per["positive"] = per["any_pos"] == 1
    per["boxes"] = [boxes.get(p, []) for p in per.index]
    out = per.reset_index()[["patient_id", "positive", "boxes", "n_rows"]]
    out.attrs["rows_read"] = len(df)
    return out


def read_classes(path: Path | None, drops: DropLog) -> dict[str, str]:
    if path is None:
        drops.note("detailed_class_info", "absent: class is 'Lung Opacity' or 'No Lung Opacity'")
        return {}
    df = read_csv_counting_bad(path, drops, name="malformed_class_row")
    require_columns(df, ["patientId", "class"], path)
    return dict(zip(df["patientId"].astype(str).str.strip(), df["class"].astype(str).str.strip()))


def parse(opts: PrepareOptions) -> SourceTable:
    root = Path(opts.root)
    drops = DropLog(opts.strict)
    label_path = find_file(root, [LABEL_FILE], "the RSNA Pneumonia Detection data set")
    assert label_path is not None
    per = read_labels(label_path, drops)
    classes = read_classes(find_file(root, [CLASS_FILE], "RSNA", required=False), drops)
    image_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root / IMAGE_DIRS[0])
    splits = patient_split(per["patient_id"], SPLIT_FRACTIONS, seed=opts.seed)
    default_class = np.where(per["positive"], "Lung Opacity", "No Lung Opacity")
    df = canonical_frame(
        len(per),
        study_id=per["patient_id"],
        patient_id=per["patient_id"],
        split=per["patient_id"].map(splits),
        source_path=[str(image_dir / f"{p}.dcm") for p in per["patient_id"]],
    )
    pos = per["positive"].astype(float).to_numpy()
    df["Pneumonia"] = pos
    df["Lung Opacity"] = pos
    df["class"] = [classes.get(p, d) for p, d in zip(per["patient_id"], default_class)]
    df["boxes"] = [dumps_boxes(b) for b in per["boxes"]]
    df["source"] = "rsna"
    df["mask_spec"] = [json.dumps({"boxes": b}) for b in per["boxes"]]
    return SourceTable("rsna", df, drops, rows_read=per.attrs["rows_read"], info={"label_file": str(label_path)})
