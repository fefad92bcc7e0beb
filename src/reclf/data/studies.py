"""The canonical study table: one record format that every data source is turned into.

A table lives in a folder as ``studies.csv`` (or ``studies.parquet``); ``image_path`` and
``mask_path`` are relative to that folder. ``read_studies`` validates on read so that a broken
table fails early with a message naming the column or row, instead of deep inside training.
Splits are written as ID lists beside the table (``splits/<split>.txt``) so anyone can rebuild
them.
"""

from __future__ import annotations

import codecs
import io
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from reclf.utils.io import atomic_path, atomic_write_text

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

REQUIRED_COLUMNS: tuple[str, ...] = (
    "study_id",
    "patient_id",
    "image_path",
    "view",
    "report",
    "findings",
    "impression",
    "split",
    *CHEXPERT_LABELS,
)
OPTIONAL_COLUMNS: tuple[str, ...] = ("mask_path", "boxes", "class", "source", "annotations")
VIEWS: tuple[str, ...] = ("PA", "AP", "LATERAL", "UNKNOWN")
SPLITS: tuple[str, ...] = ("train", "valid", "test")
LABEL_VALUES = {1.0, 0.0, -1.0}
TEXT_COLUMNS = ("study_id", "patient_id", "image_path", "view", "report", "findings", "impression", "split")

TABLE_NAMES = ("studies.csv", "studies.parquet")


class StudyTableError(ValueError):
    """A study table that does not follow the canonical format."""


# --- text decoding, one line at a time --------------------------------------------------------------------------

#: Put in place of each byte that no encoding could decode: a Unicode non-character, never in real text, so a
#: parsed row that holds it is known to come from a bad line. ASCII bytes always decode, so CSV quoting and
#: delimiters are never disturbed by the substitution.
BAD_TEXT = "\ufffe"


def _mark_bad_bytes(exc: UnicodeError) -> tuple[str, int]:
    """The ``reclf-mark`` decoding error handler: each undecodable byte becomes :data:`BAD_TEXT`."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return BAD_TEXT, exc.end


codecs.register_error("reclf-mark", _mark_bad_bytes)


def parse_encodings(spec: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """``"utf-8,cp1252"`` -> ``("utf-8", "cp1252")`` (default UTF-8); an unknown name is an error naming it."""
    if spec is None or spec == "":
        return ("utf-8",)
    names = tuple(n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip())
    for name in names:
        try:
            codecs.lookup(name)
        except LookupError as exc:
            raise ValueError(f"--encoding {name!r} is not a known text encoding (e.g. utf-8, cp1252, latin-1)") from exc
    return names or ("utf-8",)


def decode_lines(data: bytes, encodings: tuple[str, ...] = ("utf-8",)) -> tuple[str, list[int], dict[str, int]]:
    """Decode ``data`` line by line: ``(text, bad line numbers, {fallback encoding: lines decoded with it})``.

    Each line is decoded with the first of ``encodings`` that can decode it; a line none can decode keeps its
    text with :data:`BAD_TEXT` in place of each bad byte, so the caller can drop the row and name its line.
    A UTF-8 byte-order mark is ignored. A file that decodes whole with the first encoding takes a fast path.
    """
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode(encodings[0]), [], {}
    except UnicodeDecodeError:
        pass
    out: list[str] = []
    bad: list[int] = []
    used: dict[str, int] = {}
    for number, line in enumerate(data.splitlines(keepends=True), start=1):
        for k, enc in enumerate(encodings):
            try:
                out.append(line.decode(enc))
            except UnicodeDecodeError:
                continue
            if k:
                used[enc] = used.get(enc, 0) + 1
            break
        else:
            out.append(line.decode(encodings[0], errors="reclf-mark"))
            bad.append(number)
    return "".join(out), bad, used


def table_path(folder: str | Path) -> Path:
    folder = Path(folder)
    for name in TABLE_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise StudyTableError(
        f"{folder} holds no study table (expected {' or '.join(TABLE_NAMES)}); "
        "create one with `reclf synth` or `reclf prepare`"
    )


def read_studies(folder: str | Path, validate: bool = True) -> pd.DataFrame:
    """Read and validate the canonical study table in ``folder``.

    Text columns come back as ``str`` (missing text as ""), label columns as float with NaN for
    "unmentioned". Raises :class:`StudyTableError` naming the column or row at fault.
    """
    path = table_path(folder)
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    else:
        df = _read_csv_table(path)
    df = normalise(df, source=str(path))
    if validate:
        validate_studies(df, source=str(path))
    return df


def _read_csv_table(path: Path) -> pd.DataFrame:
    """``studies.csv`` as strings; rows on lines that are not UTF-8 are dropped with a warning naming the lines."""
    data = path.read_bytes()
    if not data.strip():
        raise StudyTableError(f"{path} is empty (0 bytes); recreate it with `reclf prepare` or `reclf synth`")
    text, bad_lines, _ = decode_lines(data)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise StudyTableError(f"{path} is not a readable CSV table: {exc}") from exc
    if bad_lines:
        if 1 in bad_lines:
            raise StudyTableError(f"{path}: the header line is not UTF-8 text; re-save the table as UTF-8")
        bad = df.apply(lambda col: col.str.contains(BAD_TEXT, regex=False)).any(axis=1)
        df = df[~bad].reset_index(drop=True)
        lines = ", ".join(map(str, bad_lines[:5])) + (" ..." if len(bad_lines) > 5 else "")
        print(
            f"reclf: warning: {path}: dropped {int(bad.sum())} row(s) that are not UTF-8 text (line {lines}); "
            "re-save the table as UTF-8 to keep them",
            file=sys.stderr,
        )
        df.attrs["rows_not_utf8"] = int(bad.sum())
    return df


def normalise(df: pd.DataFrame, source: str = "table") -> pd.DataFrame:
    """Give every canonical column its canonical dtype (text as str, labels as float)."""
    df = df.copy()
    for col in TEXT_COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if c in df.columns):
        if col in df.columns:
            df[col] = df[col].fillna("").astype(str)
    for col in CHEXPERT_LABELS:
        if col in df.columns:
            raw = df[col].replace("", np.nan)
            try:
                df[col] = pd.to_numeric(raw, errors="raise").astype(float)
            except (ValueError, TypeError) as exc:
                bad = raw[pd.to_numeric(raw, errors="coerce").isna() & raw.notna()]
                row = int(bad.index[0]) if len(bad) else -1
                raise StudyTableError(
                    f"{source}: column {col!r} row {row}: {bad.iloc[0]!r} is not a label "
                    "(use 1, 0, -1 or leave empty)"
                ) from exc
    return df


def validate_studies(df: pd.DataFrame, source: str = "table") -> None:
    """Raise :class:`StudyTableError` if ``df`` breaks the canonical format."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise StudyTableError(
            f"{source}: missing column(s) {missing}; a study table needs {list(REQUIRED_COLUMNS)}"
        )
    empty_ids = df.index[df["study_id"].astype(str).str.len() == 0]
    if len(empty_ids):
        raise StudyTableError(f"{source}: row {int(empty_ids[0])} has an empty study_id")
    dup = df["study_id"].duplicated(keep="first")
    if dup.any():
        row = int(df.index[dup][0])
        raise StudyTableError(
            f"{source}: duplicate study_id {df.loc[row, 'study_id']!r} at row {row}; study_id must be unique"
        )
    bad_split = ~df["split"].isin(SPLITS)
    if bad_split.any():
        row = int(df.index[bad_split][0])
        raise StudyTableError(
            f"{source}: row {row} has split {df.loc[row, 'split']!r}; allowed: {', '.join(SPLITS)}"
        )
    bad_view = ~df["view"].isin(VIEWS)
    if bad_view.any():
        row = int(df.index[bad_view][0])
        raise StudyTableError(
            f"{source}: row {row} has view {df.loc[row, 'view']!r}; allowed: {', '.join(VIEWS)}"
        )
    for col in CHEXPERT_LABELS:
        values = df[col]
        bad = values.notna() & ~values.isin(LABEL_VALUES)
        if bad.any():
            row = int(df.index[bad][0])
            raise StudyTableError(
                f"{source}: column {col!r} row {row} holds {float(values[row]):g}; labels are 1, 0, -1 or empty"
            )
    for col in ("boxes", "annotations"):
        if col in df.columns:
            for row, text in df[col].items():
                if text:
                    try:
                        json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise StudyTableError(f"{source}: column {col!r} row {row} is not JSON ({exc})") from exc


def empty_labels() -> dict[str, float]:
    return {name: np.nan for name in CHEXPERT_LABELS}


def write_studies(df: pd.DataFrame, folder: str | Path, write_splits: bool = True) -> Path:
    """Validate and write ``df`` as ``folder/studies.csv`` (atomically) plus split ID lists."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    df = normalise(df, source=str(folder))
    validate_studies(df, source=str(folder))
    ordered = [c for c in REQUIRED_COLUMNS] + [c for c in OPTIONAL_COLUMNS if c in df.columns]
    ordered += [c for c in df.columns if c not in ordered]
    path = folder / "studies.csv"
    with atomic_path(path) as tmp:
        df[ordered].to_csv(tmp, index=False)
    if write_splits:
        write_split_lists(df, folder)
    return path


def write_split_lists(df: pd.DataFrame, folder: str | Path) -> None:
    """``splits/<split>.txt``: the study IDs of each split, one per line, in table order."""
    folder = Path(folder) / "splits"
    for split in SPLITS:
        ids = df.loc[df["split"] == split, "study_id"].astype(str).tolist()
        atomic_write_text(folder / f"{split}.txt", "\n".join(ids) + ("\n" if ids else ""))


def patient_split(
    patients: Iterable[str], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, str]:
    """Assign each patient to train/valid/test with a seeded permutation (patient-disjoint splits)."""
    unique = sorted(set(map(str, patients)))
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions {fractions} must sum to 1")
    order = np.random.default_rng(seed).permutation(len(unique))
    n_train = int(round(fractions[0] * len(unique)))
    n_valid = int(round(fractions[1] * len(unique)))
    out: dict[str, str] = {}
    for rank, idx in enumerate(order):
        out[unique[idx]] = "train" if rank < n_train else ("valid" if rank < n_train + n_valid else "test")
    return out


def label_matrix(df: pd.DataFrame, labels: Iterable[str] = CHEXPERT_LABELS) -> np.ndarray:
    """``[N, L]`` float array of the label columns (NaN = unmentioned)."""
    return df[list(labels)].to_numpy(dtype=float)
