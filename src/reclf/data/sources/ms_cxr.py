"""MS-CXR (PhysioNet, BioViL's phrase grounding set) + the user's MIMIC-CXR-JPG images -> one row per image.

* The local-alignment CSV as distributed: ``MS_CXR_Local_Alignment_v1.1.0.csv`` (or ``v1.0.0``, any
  ``MS_CXR_Local_Alignment_v*.csv``; ``--csv`` names another) in ``--root``, one row per **box** with the
  columns ``dicom_id, category_name, label_text, path, x, y, w, h, image_width, image_height`` and, from
  v1.1.0, ``split``. ``x, y, w, h`` are pixels (top-left corner, width, height) of the MIMIC-CXR-JPG image
  whose size is ``image_width x image_height``; ``path`` is that image below the MIMIC-CXR-JPG root
  (``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg``). The images are not part of MS-CXR: ``--mimic-jpg`` is the
  MIMIC-CXR-JPG folder that holds ``files/`` (default: ``--root``).
* A phrase is a ``(dicom_id, label_text)`` pair; its boxes are all the rows of that pair. A row of the
  table is an image; ``annotations`` lists its phrases: ``{"phrase", "category", "boxes", "boxes_px"}``
  where ``boxes`` are ``[x, y, w, h]`` as **fractions** of the width and height of the file ``image_path``
  names (so a smaller copy of the JPG or the prepared cache keeps the boxes right; with ``--square`` the
  fractions are of the padded square) and ``boxes_px`` the original pixels. ``class`` is the first phrase's
  category, ``boxes`` the pixel boxes of all phrases, ``report`` / ``findings`` the phrases joined.
* Split: the CSV's ``split`` column when it has one (``val`` -> valid), else ``test`` (BioViL evaluates on
  all of MS-CXR; ``reclf evaluate phrase-grounding`` reads every split unless ``--split`` says otherwise).
* Bad rows are counted and dropped: a box that is not four numbers with a positive size inside the image,
  an image size that is not positive or differs between two rows of one image, an empty phrase, a path
  that is not a MIMIC-CXR file path, an unknown split.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from reclf.data.sources.common import (
    DropLog,
    PrepareOptions,
    SourceLayoutError,
    SourceTable,
    canonical_frame,
    dumps_boxes,
    find_file,
    read_csv_counting_bad,
    require_columns,
)

CSV_NAMES = ("MS_CXR_Local_Alignment_v1.1.0.csv", "MS_CXR_Local_Alignment_v1.0.0.csv")
COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height")
SPLIT_MAP = {"train": "train", "val": "valid", "valid": "valid", "validate": "valid", "test": "test"}
_PATH = re.compile(r"(?:^|/)files/p\d+/p(?P<subject>\d+)/s(?P<study>\d+)/(?P<dicom>[^/]+)\.(?:jpg|jpeg|png|dcm)$",
                   re.IGNORECASE)


def find_csv(root: Path, csv: Path | None) -> Path:
    """The local-alignment CSV: ``--csv``, one of the distributed names, or any ``MS_CXR_Local_Alignment_v*.csv``."""
    if csv is not None:
        path = csv if csv.is_absolute() or csv.is_file() else root / csv
        if not path.is_file():
            raise SourceLayoutError(f"--csv {csv}: no such file")
        return path
    found = find_file(root, CSV_NAMES, "MS-CXR", required=False)
    if found is not None:
        return found
    others = sorted(root.glob("MS_CXR_Local_Alignment_v*.csv"))
    if others:
        return others[-1]
    raise SourceLayoutError(f"{root} does not look like MS-CXR: expected {CSV_NAMES[0]} (or v1.0.0) in it; point "
                            "--root at the MS-CXR folder or name the CSV with --csv")


def fractions(box: tuple[float, float, float, float], width: float, height: float, square: bool
              ) -> list[float]:
    """``[x, y, w, h]`` pixels -> fractions of the image (or of its padded square, as the cache pads it)."""
    x, y, w, h = box
    if square:
        n = max(width, height)
        left, top = (n - width) // 2, (n - height) // 2
        return [(x + left) / n, (y + top) / n, w / n, h / n]
    return [x / width, y / height, w / width, h / height]


def parse(opts: PrepareOptions) -> SourceTable:
    root = Path(opts.root).resolve()
    drops = DropLog(opts.strict)
    csv = find_csv(root, Path(opts.extra["csv"]) if opts.extra.get("csv") else None)
    df = read_csv_counting_bad(csv, drops)
    require_columns(df, COLUMNS, csv)
    n_read = len(df)
    lines = df.attrs.get("lines") or list(range(2, n_read + 2))
    mimic = Path(opts.get("mimic_jpg", root)).resolve()

    for c in ("dicom_id", "category_name", "label_text", "path"):
        df[c] = df[c].astype(str).str.strip()
    num = df[["x", "y", "w", "h", "image_width", "image_height"]].apply(pd.to_numeric, errors="coerce")
    finite = np.isfinite(num.to_numpy(dtype=float)).all(axis=1)
    inside = (
        (num["w"] > 0) & (num["h"] > 0) & (num["image_width"] > 0) & (num["image_height"] > 0)
        & (num["x"] >= -1) & (num["y"] >= -1)
        & (num["x"] + num["w"] <= num["image_width"] + 1) & (num["y"] + num["h"] <= num["image_height"] + 1)
    ).to_numpy()
    bad_box = ~(finite & inside)
    where = [f"line {n}" for n in np.asarray(lines)[bad_box][:5]]
    drops.bad("malformed_box", f"{csv.name}: a box that is not four numbers with a positive size inside the image",
              int(bad_box.sum()), where)
    keep = ~bad_box
    empty = keep & ((df["label_text"] == "") | (df["dicom_id"] == "")).to_numpy()
    drops.bad("empty_phrase", f"{csv.name}: a row without a dicom_id or a label_text", int(empty.sum()),
              [f"line {n}" for n in np.asarray(lines)[empty][:5]])
    keep &= ~empty
    match = df["path"].str.extract(_PATH)
    bad_path = keep & (match["dicom"].isna() | (match["dicom"] != df["dicom_id"])).to_numpy()
    drops.bad("bad_path", f"{csv.name}: path is not files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg", int(bad_path.sum()),
              [f"line {n}: {p}" for n, p in zip(np.asarray(lines)[bad_path][:5], df["path"][bad_path][:5])])
    keep &= ~bad_path
    has_split = "split" in df.columns
    split = df["split"].astype(str).str.strip().str.lower().map(SPLIT_MAP) if has_split else pd.Series(
        "test", index=df.index)
    bad_split = keep & split.isna().to_numpy()
    drops.bad("unknown_split", f"{csv.name}: a split other than train, val, test", int(bad_split.sum()),
              [f"line {n}" for n in np.asarray(lines)[bad_split][:5]])
    keep &= ~bad_split
    rows = df[keep].assign(**{k: num.loc[keep, k] for k in num.columns}, split=split[keep],
                           subject=match.loc[keep, "subject"])

    # one image size per image: rows of one dicom that disagree are all dropped (their boxes cannot be placed)
    sizes = rows.groupby("dicom_id")[["image_width", "image_height"]].nunique()
    conflicting = sizes.index[(sizes > 1).any(axis=1)]
    n_conf = int(rows["dicom_id"].isin(conflicting).sum())
    drops.bad("conflicting_image_size", "rows of one image with different image_width/image_height", n_conf,
              list(conflicting[:5]))
    rows = rows[~rows["dicom_id"].isin(conflicting)]
    splits = rows.groupby("dicom_id")["split"].nunique()
    two = splits.index[splits > 1]
    drops.bad("conflicting_split", "rows of one image in different splits", int(rows["dicom_id"].isin(two).sum()),
              list(two[:5]))
    rows = rows[~rows["dicom_id"].isin(two)]

    square = bool(opts.square) and not opts.metadata_only  # the cache pads; the originals are not padded
    records = []
    for dicom, g in rows.groupby("dicom_id", sort=True):
        width, height = float(g["image_width"].iloc[0]), float(g["image_height"].iloc[0])
        phrases = []
        for phrase, p in g.groupby("label_text", sort=False):
            px = [[float(v) for v in b] for b in p[["x", "y", "w", "h"]].to_numpy()]
            phrases.append({
                "phrase": phrase,
                "category": str(p["category_name"].iloc[0]),
                "boxes": [
                    [round(v, 6) for v in fractions((b[0], b[1], b[2], b[3]), width, height, square)] for b in px
                ],
                "boxes_px": [[round(v, 2) for v in b] for b in px],
            })
        records.append({
            "dicom_id": dicom, "subject": str(g["subject"].iloc[0]), "path": str(g["path"].iloc[0]),
            "split": str(g["split"].iloc[0]), "phrases": phrases,
        })
    drops.note("phrases", sum(len(r["phrases"]) for r in records))
    drops.note("phrases_with_several_boxes", sum(len(p["boxes"]) > 1 for r in records for p in r["phrases"]))
    text = [" ".join(p["phrase"].rstrip(".") + "." for p in r["phrases"]) for r in records]
    out = canonical_frame(
        len(records),
        study_id=[r["dicom_id"] for r in records],
        patient_id=[r["subject"] for r in records],
        view="UNKNOWN",
        report=text,
        findings=text,
        split=[r["split"] for r in records],
        source_path=[str(mimic / r["path"]) for r in records],
    )
    out["class"] = [r["phrases"][0]["category"] for r in records]
    out["boxes"] = [dumps_boxes([b for p in r["phrases"] for b in p["boxes_px"]]) for r in records]
    out["annotations"] = [json.dumps(r["phrases"]) for r in records]
    out["source"] = "ms-cxr"
    if not (mimic / "files").is_dir() and not opts.metadata_only:
        raise SourceLayoutError(f"{mimic} has no files/ folder; pass --mimic-jpg, the MIMIC-CXR-JPG folder that "
                                "holds files/pXX/...")
    return SourceTable("ms-cxr", out, drops, rows_read=n_read,
                       info={"csv": str(csv), "mimic_jpg": str(mimic), "split_column": has_split})
