"""SIIM-ACR Pneumothorax: ``train-rle.csv`` + DICOMs (nested tree) or PNGs -> table, masks, image-level split.

Honoured quirks of the distributed files: the column is ``" EncodedPixels"`` with a leading space (also accepted
without it); ``-1`` means no pneumothorax; an image with several pneumothoraces has several rows, which are
united into one mask. The split is made on **image ids**, never on rows (GLoRIA/MGCA split rows, so one image can
land in train and test). SIIM gives no patient id in the CSV, so the image is the unit of the split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from reclf.data.sources.common import (
    DropLog,
    PrepareOptions,
    SourceLayoutError,
    SourceTable,
    canonical_frame,
    find_file,
    read_csv_counting_bad,
)
from reclf.data.sources.masks import SIIM_SHAPE, MaskSpecError, check_runs, rle_runs
from reclf.data.studies import patient_split
from reclf.utils.seed import rng

RLE_FILES = ("train-rle.csv", "siim-pneumothorax-train-rle.csv", "stage_2_train.csv")
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)


def read_rle_csv(path: Path, drops: DropLog) -> pd.DataFrame:
    """The RLE rows as ``image_id, rle`` (stripped strings); malformed rows counted and dropped."""
    df = read_csv_counting_bad(path, drops)
    cols = {str(c).strip(): c for c in df.columns}
    if "ImageId" not in cols or "EncodedPixels" not in cols:
        raise SourceLayoutError(
            f"{path}: expected the columns 'ImageId' and ' EncodedPixels'; found {list(df.columns)}"
        )
    out = pd.DataFrame(
        {
            "image_id": df[cols["ImageId"]].fillna("").astype(str).str.strip(),
            "rle": df[cols["EncodedPixels"]].fillna("").astype(str).str.strip(),
        }
    )
    bad = (out["image_id"] == "") | (out["rle"] == "")
    drops.bad(
        "malformed_csv_row",
        f"{path.name}: row without an ImageId or EncodedPixels",
        int(bad.sum()),
        out.index[bad].tolist(),
    )
    return out[~bad].reset_index(drop=True)


def group_images(rows: pd.DataFrame, drops: DropLog, shape: tuple[int, int] = SIIM_SHAPE) -> pd.DataFrame:
    """One row per image: ``image_id, rles (list of positive RLEs), positive, n_rows``.

    An image with an RLE that does not decode inside ``shape`` is dropped (its mask would be wrong) and counted;
    an image with both ``-1`` and positive rows is positive (rows are united) and counted as a note.
    """
    positive_row = rows["rle"] != "-1"
    bad_ids: list[str] = []
    for image_id, rle in zip(rows.loc[positive_row, "image_id"], rows.loc[positive_row, "rle"]):
        try:
            starts, lengths = rle_runs(rle)
            check_runs(starts, lengths, shape)
        except MaskSpecError as exc:
            bad_ids.append(f"{image_id}: {exc}")
    bad_set = {b.split(":", 1)[0] for b in bad_ids}
    n_bad_images = len(bad_set)
    drops.bad(
        "malformed_rle", "an EncodedPixels value that does not decode inside the 1024x1024 image", n_bad_images, bad_ids
    )
    rows = rows[~rows["image_id"].isin(bad_set)]
    positive_row = rows["rle"] != "-1"
    grouped = rows.assign(pos=positive_row).groupby("image_id", sort=True)
    out = pd.DataFrame(
        {
            "n_rows": grouped.size(),
            "positive": grouped["pos"].any(),
            "any_negative_row": ~grouped["pos"].all(),
        }
    )
    rles = rows[positive_row].groupby("image_id")["rle"].agg(list).to_dict()
    out["rles"] = [rles.get(i, []) for i in out.index]
    conflicting = out["positive"] & out["any_negative_row"]
    drops.note("images_with_both_minus1_and_rle_rows", int(conflicting.sum()))
    drops.note("images_with_several_rows", int((out["n_rows"] > 1).sum()))
    return out.reset_index().rename(columns={"index": "image_id"})


def index_images(root: Path) -> dict[str, Path]:
    """ImageId -> file, for DICOMs anywhere below ``root`` (the nested Kaggle tree) or PNGs."""
    found: dict[str, Path] = {}
    for pattern in ("*.dcm", "*.png"):  # DICOM first: when both exist, the original wins
        for path in sorted(root.rglob(pattern)):
            found.setdefault(path.stem, path)
    return found


def parse(opts: PrepareOptions) -> SourceTable:
    """Parse SIIM metadata (and locate images when not ``metadata_only``)."""
    root = Path(opts.root)
    drops = DropLog(opts.strict)
    path = find_file(root, RLE_FILES, "the SIIM-ACR Pneumothorax data set")
    assert path is not None
    rows = read_rle_csv(path, drops)
    n_read = len(rows)
    images = group_images(rows, drops)
    index = {} if opts.metadata_only else index_images(root)
    default = f"{root}/dicom-images-train"  # where a missing image would be expected (counted as missing)
    source = [str(index[i]) if i in index else f"{default}/{i}.dcm" for i in images["image_id"]]
    splits = patient_split(images["image_id"], SPLIT_FRACTIONS, seed=opts.seed)
    df = canonical_frame(
        len(images),
        study_id=images["image_id"],
        patient_id=images["image_id"],
        split=images["image_id"].map(splits),
        source_path=source,
    )
    df["Pneumothorax"] = images["positive"].astype(float).to_numpy()
    df["class"] = np.where(images["positive"], "pneumothorax", "no pneumothorax")
    df["source"] = "siim"
    shape = list(SIIM_SHAPE)
    df["mask_spec"] = [json.dumps({"rle": r, "shape": shape}) for r in images["rles"]]
    df["annotations"] = [f'{{"rle_rows": {n}}}' for n in images["n_rows"]]
    if opts.get("balanced_train", False):
        df = balance_train(df, opts.seed, drops)
    return SourceTable("siim", df, drops, rows_read=n_read, info={"rle_file": str(path)})


def balance_train(df: pd.DataFrame, seed: int, drops: DropLog) -> pd.DataFrame:
    """Keep every positive training image and as many negatives, drawn with a seeded generator (MGCA/GLoRIA)."""
    train = df["split"] == "train"
    pos = df.index[train & (df["Pneumothorax"] == 1.0)]
    neg = df.index[train & (df["Pneumothorax"] == 0.0)].to_numpy()
    keep_neg = np.sort(rng(seed, "siim-balance").choice(neg, size=min(len(pos), len(neg)), replace=False))
    dropped = np.setdiff1d(neg, keep_neg)
    drops.filtered(
        "balance_negatives",
        "training negatives left out to balance positives (--balanced-train)",
        len(dropped),
        df.loc[dropped[:5], "study_id"],
    )
    return df.drop(index=dropped).reset_index(drop=True)
