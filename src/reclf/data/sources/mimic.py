"""MIMIC-CXR-JPG 2.x + MIMIC-CXR reports -> one row per frontal image with findings/impression and labels.

* Metadata (``mimic-cxr-2.0.0-metadata.csv``), split (``-split.csv``) and labels (``-chexpert.csv``), plain or
  ``.gz``, in ``--root``; images at ``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg``.
* Reports: ``files/pXX/pSUBJECT/sSTUDY.txt`` below ``--reports`` (default: ``--root``), or the distributed
  ``mimic-cxr-reports.zip`` read in place (``--reports`` may name the zip).
* **One row per image**: ``study_id`` is the ``dicom_id`` (unique), ``mimic_study_id`` keeps the study; every
  image of a study carries that study's report and labels. Frontal views (PA, AP) by default (``--views``).
* Sections by :mod:`reclf.data.sections`; a study with neither findings nor impression is dropped and counted.
* The official split is kept: ``train`` -> train, ``validate`` -> valid, ``test`` -> test.
* CheXpert labels joined per (subject, study); a study without a label row keeps blank labels (counted as a note).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from reclf.data.sections import extract_sections
from reclf.data.sources.common import (
    DropLog,
    PrepareOptions,
    SourceLayoutError,
    SourceTable,
    canonical_frame,
    decode_report,
    find_file,
    read_csv_counting_bad,
    require_columns,
    view_from_text,
)
from reclf.data.studies import CHEXPERT_LABELS

PREFIX = "mimic-cxr-2.0.0"
SPLIT_MAP = {"train": "train", "validate": "valid", "valid": "valid", "test": "test"}
_REPORT_NAME = re.compile(r"p(\d+)/s(\d+)\.txt$")


class ReportStore:
    """Report bytes by (subject_id, study_id), from a folder tree or from ``mimic-cxr-reports.zip`` in place."""

    def __init__(self, location: Path):
        self.location = location
        self.zip: zipfile.ZipFile | None = None
        self.members: dict[tuple[str, str], str] = {}
        if location.is_file() and location.suffix == ".zip":
            self.zip = zipfile.ZipFile(location)
            for name in self.zip.namelist():
                m = _REPORT_NAME.search(name)
                if m:
                    self.members[(m.group(1), m.group(2))] = name

    @classmethod
    def find(cls, root: Path, reports: Path | None) -> ReportStore:
        base = reports or root
        if base.is_file():
            return cls(base)
        zipped = base / "mimic-cxr-reports.zip"
        if zipped.is_file():  # the distributed zip, read in place (it holds the same files/ tree)
            return cls(zipped)
        return cls(base)

    def read(self, subject: str, study: str) -> bytes | None:
        if self.zip is not None:
            name = self.members.get((subject, study))
            return self.zip.read(name) if name else None
        path = self.location / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        try:
            return path.read_bytes()
        except OSError:
            return None

    def describe(self) -> str:
        return str(self.location)


def read_tables(root: Path, drops: DropLog) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, str]]:
    what = "MIMIC-CXR-JPG 2.x"
    paths = {k: find_file(root, [f"{PREFIX}-{k}.csv"], what) for k in ("metadata", "split", "chexpert")}
    meta = read_csv_counting_bad(paths["metadata"], drops)
    split = read_csv_counting_bad(paths["split"], drops)
    labels = read_csv_counting_bad(paths["chexpert"], drops)
    require_columns(meta, ["dicom_id", "subject_id", "study_id", "ViewPosition"], paths["metadata"])
    require_columns(split, ["dicom_id", "split"], paths["split"])
    require_columns(labels, ["subject_id", "study_id", *CHEXPERT_LABELS], paths["chexpert"])
    return meta, split, labels, {k: str(v) for k, v in paths.items()}


def parse(opts: PrepareOptions) -> SourceTable:
    root = Path(opts.root).resolve()
    drops = DropLog(opts.strict)
    meta, split, labels, files = read_tables(root, drops)
    n_read = len(meta)
    for col in ("dicom_id", "subject_id", "study_id"):
        meta[col] = meta[col].astype(str).str.strip()
    bad_ids = ~(meta["subject_id"].str.fullmatch(r"\d+") & meta["study_id"].str.fullmatch(r"\d+")).fillna(False)
    bad_ids |= meta["dicom_id"] == ""
    drops.bad(
        "malformed_csv_row",
        "metadata row without a dicom_id or with a non-numeric subject/study id",
        int(bad_ids.sum()),
        meta.loc[bad_ids, "dicom_id"].head(5),
    )
    meta = meta[~bad_ids.astype(bool)]
    dup = meta["dicom_id"].duplicated()
    drops.bad(
        "duplicate_dicom_id", "a dicom_id listed twice in the metadata", int(dup.sum()), meta.loc[dup, "dicom_id"]
    )
    meta = meta[~dup]

    views = [v.strip().upper() for v in str(opts.get("views", "PA,AP")).split(",") if v.strip()]
    raw_view = meta["ViewPosition"].astype(str).str.strip().str.upper()
    keep = raw_view.isin(views)
    for v, n in raw_view[~keep].replace("", "(blank)").value_counts().items():
        drops.filtered(f"view_{v.lower()}", f"view {v} not selected (--views {','.join(views)})", int(n))
    meta = meta[keep]

    split_of = dict(zip(split["dicom_id"].astype(str).str.strip(), split["split"].astype(str).str.strip().str.lower()))
    meta_split = meta["dicom_id"].map(split_of).map(SPLIT_MAP)
    no_split = meta_split.isna()
    drops.bad(
        "no_split_row",
        "image without a row (or with an unknown split) in the split file",
        int(no_split.sum()),
        meta.loc[no_split, "dicom_id"].head(5),
    )
    meta = meta[~no_split].assign(split=meta_split[~no_split])

    # Reports, once per study.
    store = ReportStore.find(root, Path(opts.extra["reports"]) if opts.extra.get("reports") else None)
    studies = meta[["subject_id", "study_id"]].drop_duplicates()
    sections: dict[tuple[str, str], tuple[str, str, str]] = {}
    missing, not_utf8, empty = [], [], []
    for subject, study in zip(studies["subject_id"], studies["study_id"]):
        data = store.read(subject, study)
        if data is None:
            missing.append(f"p{subject}/s{study}")
            continue
        text = decode_report(data)
        if text is None:
            not_utf8.append(f"p{subject}/s{study}")
            continue
        sec = extract_sections(text)
        if sec.empty:
            empty.append(f"p{subject}/s{study}")
            continue
        sections[(subject, study)] = (sec.text, sec.findings, sec.impression)
    images_of = meta.groupby(["subject_id", "study_id"]).size()
    for name, reason, keys in (
        ("missing_report", f"no report for the study in {store.describe()}", missing),
        ("report_not_utf8", "the report file is not UTF-8 text", not_utf8),
        ("report_no_sections", "the report has neither findings nor impression", empty),
    ):
        n_images = int(sum(images_of[tuple(k[1:].split("/s"))] for k in keys))
        drops.bad(name, f"{reason} (counted in images; {len(keys)} studies)", n_images, keys)
    key = list(zip(meta["subject_id"], meta["study_id"]))
    has_report = np.array([k in sections for k in key], dtype=bool)
    meta = meta[has_report]
    key = [k for k, h in zip(key, has_report) if h]

    labels = labels.assign(
        subject_id=labels["subject_id"].astype(str).str.strip(), study_id=labels["study_id"].astype(str).str.strip()
    ).drop_duplicates(["subject_id", "study_id"])
    joined = meta[["subject_id", "study_id"]].merge(
        labels.assign(_labelled=True), on=["subject_id", "study_id"], how="left"
    )
    drops.note("images_without_label_row", int(joined["_labelled"].isna().sum()))

    subject = meta["subject_id"].to_numpy()
    study = meta["study_id"].to_numpy()
    paths = [f"{root}/files/p{s[:2]}/p{s}/s{t}/{d}.jpg" for s, t, d in zip(subject, study, meta["dicom_id"].to_numpy())]
    df = canonical_frame(
        len(meta),
        study_id=meta["dicom_id"],
        patient_id=meta["subject_id"],
        view=view_from_text(meta["ViewPosition"]),
        report=[sections[k][0] for k in key],
        findings=[sections[k][1] for k in key],
        impression=[sections[k][2] for k in key],
        split=meta["split"],
        source_path=paths,
    )
    for c in CHEXPERT_LABELS:
        df[c] = pd.to_numeric(joined[c], errors="coerce").to_numpy()
    bad_label = df[list(CHEXPERT_LABELS)].notna() & ~df[list(CHEXPERT_LABELS)].isin([1.0, 0.0, -1.0])
    if bad_label.any().any():
        drops.note("label_values_blanked", int(bad_label.to_numpy().sum()))
        for c in CHEXPERT_LABELS:
            df.loc[bad_label[c], c] = np.nan
    df["mimic_study_id"] = study
    df["source"] = "mimic-cxr"
    if not (root / "files").is_dir() and not opts.metadata_only:
        raise SourceLayoutError(f"{root} has no files/ folder; MIMIC-CXR-JPG images are under files/pXX/...")
    return SourceTable("mimic-cxr", df, drops, rows_read=n_read, info={"files": files, "reports": store.describe()})
