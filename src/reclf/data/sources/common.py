"""What every data set adapter shares: options, counted filters, file discovery and the run that writes outputs.

An adapter only *parses metadata* into a :class:`SourceTable` (canonical columns plus ``source_path`` — the
original image — and optionally ``mask_spec``); :func:`run_prepare` does the rest the same way for every data set:
missing-image check, the image cache, dropping rows whose image failed, writing the table(s), split lists and
``prepare_report.json``. Every row that is dropped is counted under a named filter with its reason.
"""

from __future__ import annotations

import contextvars
import gzip
import io
import json
import os
import sys
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import pandas as pd

from reclf.data.studies import CHEXPERT_LABELS, SPLITS, write_studies
from reclf.utils.io import atomic_write_json

SOURCE_COLUMNS = ("source_path", "mask_spec", "cache_key")

#: The text encodings of ``--encoding`` for the prepare run in progress (set by ``reclf.data.sources.parse_source``
#: so every adapter's CSV and report reads follow it without threading it through each helper).
ENCODINGS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("reclf_encodings", default=("utf-8",))


class SourceLayoutError(FileNotFoundError):
    """The root folder does not look like the named data set (names the file that was expected)."""


class BadInputError(ValueError):
    """Bad input met in ``--strict`` mode (names the file/row)."""


@dataclass
class PrepareOptions:
    """The arguments of ``reclf prepare`` (``extra`` holds the source-specific ones)."""

    root: Path
    out: Path
    size: int = 512
    workers: int = 1
    seed: int = 0
    strict: bool = False
    square: bool = False
    metadata_only: bool = False
    progress: bool = True
    max_pixels: int | None = None  # None: reclf.data.images.DEFAULT_MAX_PIXELS
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        value = self.extra.get(key)
        return default if value is None else value

    def as_json(self) -> dict[str, Any]:
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items() if k != "extra"}
        out.update({k: (str(v) if isinstance(v, Path) else v) for k, v in self.extra.items()})
        return out


@dataclass
class Filter:
    count: int = 0
    reason: str = ""
    examples: list[str] = field(default_factory=list)


class DropLog:
    """Counts of dropped rows per named filter.

    ``filtered`` is a deliberate policy (a lateral view, a 5x200 patient) and never raises; ``bad`` is bad input
    (a missing image, a malformed row) and raises :class:`BadInputError` in strict mode.
    """

    MAX_EXAMPLES = 5

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.filters: dict[str, Filter] = {}
        self.notes: dict[str, Any] = {}

    def _add(self, name: str, reason: str, n: int, examples: Iterable[Any]) -> None:
        if n <= 0:
            return
        f = self.filters.setdefault(name, Filter(reason=reason))
        f.count += int(n)
        room = self.MAX_EXAMPLES - len(f.examples)
        if room > 0:
            f.examples.extend(str(e) for e in list(examples)[:room])

    def filtered(self, name: str, reason: str, n: int, examples: Iterable[Any] = ()) -> None:
        self._add(name, reason, n, examples)

    def bad(self, name: str, reason: str, n: int = 1, examples: Iterable[Any] = ()) -> None:
        examples = list(examples)
        if self.strict and n > 0:
            where = f" (e.g. {', '.join(map(str, examples[:3]))})" if examples else ""
            raise BadInputError(f"{reason}: {n} row(s){where}; run without --strict to skip and count them")
        self._add(name, reason, n, examples)

    def note(self, key: str, value: Any) -> None:
        self.notes[key] = value

    def as_json(self) -> dict[str, Any]:
        return {k: {"count": f.count, "reason": f.reason, "examples": f.examples} for k, f in self.filters.items()}

    def total(self) -> int:
        return sum(f.count for f in self.filters.values())


@dataclass
class SourceTable:
    """An adapter's parsed metadata: the canonical table plus ``source_path`` (and ``mask_spec``) per row."""

    source: str
    studies: pd.DataFrame
    drops: DropLog
    rows_read: int
    info: dict[str, Any] = field(default_factory=dict)
    extra_tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # name -> table written to out/name/
    id_lists: dict[str, str] = field(default_factory=dict)  # file name -> text written to out/


# --- file discovery ------------------------------------------------------------------------------------------------


@overload
def find_file(root: Path, names: Iterable[str], what: str, required: Literal[True] = True) -> Path: ...
@overload
def find_file(root: Path, names: Iterable[str], what: str, required: bool) -> Path | None: ...
def find_file(root: Path, names: Iterable[str], what: str, required: bool = True) -> Path | None:
    """The first of ``names`` (relative to ``root``) that exists; each is also tried with ``.gz`` and ``.zip``.

    Raises :class:`SourceLayoutError` naming the expected file when none exists and ``required``.
    """
    names = list(names)
    for name in names:
        for candidate in (root / name, root / f"{name}.gz", root / f"{name}.zip"):
            if candidate.is_file():
                return candidate
    if required:
        raise SourceLayoutError(
            f"{root} does not look like {what}: expected {names[0]} (or {names[0]}.gz) in it; "
            "point --root at the folder that holds it"
        )
    return None


def read_bytes_any(path: Path) -> bytes:
    """Bytes of a plain, ``.gz`` or single-member ``.zip`` file."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as fh:
            return fh.read()
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            members = [n for n in zf.namelist() if not n.endswith("/")]
            if len(members) != 1:
                raise SourceLayoutError(f"{path} should hold one file, not {len(members)}")
            return zf.read(members[0])
    return path.read_bytes()


def read_csv_any(path: Path, **kwargs: Any) -> pd.DataFrame:
    """Read a CSV (plain/.gz/.zip) as strings; malformed lines are reported through ``on_bad_lines``."""
    kwargs.setdefault("dtype", str)
    kwargs.setdefault("keep_default_na", False)
    data = read_bytes_any(path)
    if not data.strip():
        raise SourceLayoutError(f"{path} is empty (0 bytes); expected a CSV with a header line and data rows")
    try:
        return pd.read_csv(io.BytesIO(data), **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SourceLayoutError(f"{path} cannot be read as CSV: {exc}") from exc


def read_csv_counting_bad(
    path: Path,
    drops: DropLog,
    name: str = "malformed_csv_row",
    encoding: str | tuple[str, ...] | None = None,
    delimiter: str = ",",
) -> pd.DataFrame:
    """Read a CSV (plain/.gz/.zip) as strings, dropping and counting bad rows instead of failing.

    Every cell is a string. A row with more fields than the header (an unquoted comma) is dropped and counted
    under ``name`` with its line number, wherever it is in the file (pandas would silently take the first
    column as an index when it is the first data row); a row with fewer fields gets empty cells (the adapters'
    own checks count those). Text is decoded per line with :func:`reclf.data.studies.decode_lines`: a row on
    a line that none of ``encoding`` (``"utf-8"`` by default, ``--encoding``) can decode is dropped and counted
    as ``not_decodable_row``. The frame's ``attrs["lines"]`` holds each kept row's first line number. A 0-byte
    file, a file without a header, an undecodable header and a CSV the parser cannot follow are errors naming
    the file. ``delimiter="\\t"`` reads a tab-separated file (Chest ImaGenome's gold tables).
    """
    import csv

    from reclf.data.studies import BAD_TEXT, decode_lines, parse_encodings

    encodings = parse_encodings(encoding) if encoding is not None else ENCODINGS.get()
    data = read_bytes_any(path)
    if not data.strip():
        raise SourceLayoutError(f"{path} is empty (0 bytes); expected a CSV with a header line and data rows")
    text, bad_lines, fallback = decode_lines(data, encodings)
    csv.field_size_limit(2**31 - 1)  # a 1 MB report is one field
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    too_many: list[str] = []
    undecodable: list[str] = []
    start = 1
    try:
        for record in reader:
            first, start = start, reader.line_num + 1
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line
            if header is None:
                if any(BAD_TEXT in c for c in record):
                    raise SourceLayoutError(
                        f"{path}: the header line is not valid {'/'.join(encodings)} text; pass --encoding "
                        "(e.g. --encoding utf-8,cp1252)"
                    )
                header = _unique_names(record)
                continue
            if any(BAD_TEXT in c for c in record):
                undecodable.append(f"line {first}")
                continue
            if len(record) > len(header):
                too_many.append(f"line {first}: {len(record)} fields, header has {len(header)}")
                continue
            if len(record) < len(header):
                record = record + [""] * (len(header) - len(record))
            rows.append(record)
            lines.append(first)
    except csv.Error as exc:
        raise SourceLayoutError(f"{path}: line {reader.line_num} cannot be parsed as CSV ({exc})") from exc
    if header is None:
        raise SourceLayoutError(f"{path} holds no header line; expected a CSV with a header line and data rows")
    drops.bad(name, f"{path.name}: line with more fields than the header (an unquoted comma?)", len(too_many), too_many)
    drops.bad(
        "not_decodable_row",
        f"{path.name}: line that is not valid {'/'.join(encodings)} text (--encoding chooses the encodings)",
        len(undecodable),
        undecodable,
    )
    if fallback:
        drops.note(f"{path.name}: lines decoded with a fallback encoding", fallback)
    df = pd.DataFrame(rows, columns=header, dtype=str) if rows else pd.DataFrame(columns=header, dtype=str)
    df.attrs["lines"] = lines
    return df


def _unique_names(names: list[str]) -> list[str]:
    """Header names made unique the way pandas does it (``a``, ``a.1``, ...)."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        out.append(n if k == 0 else f"{n}.{k}")
        seen[n] = k + 1
    return out


def decode_report(data: bytes) -> str | None:
    """A report's text in the first of ``--encoding`` that decodes it whole (None: none does)."""
    for enc in ENCODINGS.get():
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    return None


def require_columns(df: pd.DataFrame, columns: Iterable[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SourceLayoutError(f"{path}: missing column(s) {missing}; found {list(df.columns)[:20]}")


def empty_label_frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({c: np.full(n, np.nan) for c in CHEXPERT_LABELS})


def canonical_frame(n: int, **columns: Any) -> pd.DataFrame:
    """A frame with every canonical column (labels NaN, text "") overlaid with ``columns``."""
    base = {
        "study_id": [""] * n,
        "patient_id": [""] * n,
        "image_path": [""] * n,
        "view": ["UNKNOWN"] * n,
        "report": [""] * n,
        "findings": [""] * n,
        "impression": [""] * n,
        "split": ["train"] * n,
    }
    df = pd.DataFrame(base)
    df = pd.concat([df, empty_label_frame(n)], axis=1)
    for key, value in columns.items():
        df[key] = value if not isinstance(value, pd.Series) else value.to_numpy()
    return df


def view_from_text(values: pd.Series) -> pd.Series:
    """Map view strings (``PA``, ``AP``, ``AP AXIAL``, ``LATERAL``, ``LL``, ...) to the canonical views."""
    v = values.fillna("").astype(str).str.strip().str.upper()
    out = pd.Series("UNKNOWN", index=values.index)
    out[v.str.startswith("PA")] = "PA"
    out[v.str.startswith("AP")] = "AP"
    out[v.isin(["LATERAL", "LL", "RL", "LAT", "LAO", "RAO", "LPO", "RPO"]) | v.str.startswith("LAT")] = "LATERAL"
    return out


# --- the run ---------------------------------------------------------------------------------------------------


def _cache_rel(path: str, root: Path) -> str:
    """Where a source image goes in the cache: its path below the root, with a ``.png`` suffix."""
    p = Path(path)
    try:
        rel = p.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(p.name)
    return str(Path("images") / rel.with_suffix(".png"))


def cache_names(files: Iterable[str], root: Path) -> dict[str, str]:
    """A cache path (relative to ``--out``) for each distinct source file, unique per file.

    The usual name is the path below the root with a ``.png`` suffix (``a/scan.jpg`` -> ``images/a/scan.png``).
    When two distinct files would share a name (``scan.png`` and ``scan.jpg`` in one folder; two files named
    ``x.png`` outside the root) each of them keeps its extension (``scan.jpg.png``) and, if that still clashes,
    gets a hash of its full path (``scan.3f2a9c01de.png``). ``files`` should be real paths (symlinks and ``..``
    resolved) so that one file has one name. Deterministic for a given set of files.
    """
    import hashlib

    distinct = list(dict.fromkeys(files))
    names = {f: _cache_rel(f, root) for f in distinct}

    def with_ext(f: str) -> str:
        name = Path(names[f])
        return str(name.with_name(Path(f).name + ".png"))

    def hashed(f: str) -> str:
        digest = hashlib.sha1(str(Path(f).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:10]
        return str(Path(names[f]).with_name(f"{Path(f).stem}.{digest}.png"))

    for rule in (with_ext, hashed):
        seen: dict[str, int] = {}
        for name in names.values():
            seen[name] = seen.get(name, 0) + 1
        clash = [f for f in distinct if seen[names[f]] > 1]
        if not clash:
            break
        for f in clash:
            names[f] = rule(f)
    if len(set(names.values())) != len(names):  # a bug guard: sha1 prefixes of distinct paths do not clash
        raise RuntimeError("cache names are not unique; please report this")
    return names


def _note_shared_images(main: pd.DataFrame, real_of: dict[str, str], drops: DropLog) -> None:
    """Rows of the main table whose image is the same file as another row's: kept, but reported."""
    real = main["source_path"].map(lambda p: real_of.get(p, ""))
    shared = (real != "") & real.duplicated(keep=False)
    if shared.any():
        ids = main.loc[shared, "study_id"].astype(str).tolist()
        drops.note(
            "rows_sharing_an_image",
            {
                "count": int(shared.sum()),
                "files": int(real[shared].nunique()),
                "reason": "two or more rows name the same image file (kept; check that this is intended)",
                "examples": ids[: DropLog.MAX_EXAMPLES],
            },
        )


def run_prepare(table: SourceTable, opts: PrepareOptions) -> dict[str, Any]:
    """Check images, build the cache, write tables, split lists and ``prepare_report.json``; return the report."""
    from reclf.data.sources.cache import CacheJob, build_cache

    t0 = time.time()
    if table.rows_read == 0:
        where = table.info.get("csv") or table.info.get("metadata") or opts.root
        raise SourceLayoutError(
            f"{where}: the metadata holds no data rows (a header only?); nothing to prepare. "
            "Check --root and the file names"
        )
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    drops = table.drops
    main = table.studies.reset_index(drop=True)
    extras = {k: v.reset_index(drop=True) for k, v in table.extra_tables.items()}
    cache_summary: dict[str, Any] = {"size": opts.size, "square": opts.square}

    # All rows that need an image (main and extra tables), keyed by source path.
    every = pd.concat([main[["source_path"]]] + [t[["source_path"]] for t in extras.values()], ignore_index=True)
    sources = list(dict.fromkeys(every["source_path"].astype(str)))

    if opts.metadata_only:
        # No images are read: image_path points at the original file (absolute paths from the adapters), masks
        # are not drawn.
        for df in [main, *extras.values()]:
            df["image_path"] = df["source_path"].astype(str).to_numpy()
        cache_summary["skipped"] = "metadata only"
        ok_paths = set(sources)
        meta: dict[str, dict] = {}
    else:
        exists = {p: os.path.isfile(p) for p in sources}
        missing = [p for p, e in exists.items() if not e]
        n_missing_rows = int((~main["source_path"].map(exists)).sum())
        drops.bad("missing_image", "the image file named by the metadata does not exist", n_missing_rows, missing)
        # One file, one cache entry: ``a/../x.png``, ``x.png`` and a symlink to it are the same file.
        real_of = {p: os.path.realpath(p) for p in sources if exists[p]}
        _note_shared_images(main, real_of, drops)
        names = cache_names(real_of.values(), Path(opts.root))
        mask_of: dict[str, str] = {}
        if "mask_spec" in main.columns:
            for p, spec in zip(main["source_path"], main["mask_spec"]):
                if isinstance(spec, str) and spec and p in real_of:
                    mask_of.setdefault(real_of[p], spec)
        jobs = []
        for real, dst in names.items():
            spec = mask_of.get(real)
            mask_dst = str(Path("masks") / Path(dst).relative_to("images")) if spec else None
            jobs.append(CacheJob(key=real, src=real, dst=dst, mask_spec=spec, mask_dst=mask_dst))
        result = build_cache(
            jobs, out, opts.size, opts.square, opts.workers, progress=opts.progress, max_pixels=opts.max_pixels
        )
        cache_summary.update(result.summary())
        cache_summary["distinct_images"] = len(jobs)
        failed_sources = {p for p, r in real_of.items() if r in result.failed}
        failed_rows = int(main["source_path"].isin(list(failed_sources)).sum())
        drops.bad(
            "unreadable_image",
            "the image could not be read (corrupt/truncated JPEG, PNG or DICOM, more pixels than --max-pixels, "
            "or a mask that does not fit it)",
            failed_rows,
            [f"{k}: {v}" for k, v in list(result.failed.items())],
        )
        ok_paths = {p for p in real_of if p not in failed_sources}
        meta = {p: result.meta[r] for p, r in real_of.items() if r in result.meta}
        dst_of = {p: names[r] for p, r in real_of.items()}
        mask_dst_by_real = {j.key: j.mask_dst for j in jobs if j.mask_dst}
        mask_dst_of = {p: mask_dst_by_real[r] for p, r in real_of.items() if r in mask_dst_by_real}
        for name, df in [("", main), *extras.items()]:
            prefix = "../" if name else ""
            df["image_path"] = [prefix + dst_of.get(p, "") for p in df["source_path"]]
            if mask_dst_of or "mask_spec" in df.columns:
                df["mask_path"] = [prefix + mask_dst_of[p] if p in mask_dst_of else "" for p in df["source_path"]]

    def keep(df: pd.DataFrame) -> pd.DataFrame:
        df = df[df["source_path"].isin(ok_paths)].copy()
        # Header fields from the image itself fill in what the metadata did not say.
        if meta:
            views = df["source_path"].map(lambda p: meta.get(p, {}).get("view", ""))
            fill = (df["view"] == "UNKNOWN") & views.isin(["PA", "AP", "LATERAL", "LL"])
            df.loc[fill, "view"] = views[fill].replace({"LL": "LATERAL"})
        return df.drop(columns=[c for c in SOURCE_COLUMNS if c in df.columns])

    main_out = keep(main)
    write_studies(main_out, out)
    tables = {"studies": "studies.csv"}
    for name, df in extras.items():
        sub = keep(df)
        write_studies(sub, out / name)
        tables[name] = f"{name}/studies.csv"
    for fname, text in table.id_lists.items():
        from reclf.utils.io import atomic_write_text

        atomic_write_text(out / fname, text)

    report = {
        "source": table.source,
        **table.info,
        "arguments": opts.as_json(),
        "seed": opts.seed,
        "command": " ".join(sys.argv) if sys.argv else "",
        "rows_read": table.rows_read,
        "rows_written": int(len(main_out)),
        "splits": {s: int((main_out["split"] == s).sum()) for s in SPLITS},
        "dropped": drops.as_json(),
        "dropped_total": drops.total(),
        "notes": drops.notes,
        "tables": tables,
        "id_lists": sorted(table.id_lists),
        "cache": cache_summary,
        "elapsed_s": round(time.time() - t0, 3),
    }
    atomic_write_json(out / "prepare_report.json", report)
    if len(main_out) == 0:
        raise BadInputError(
            f"none of the {table.rows_read} rows read from {opts.root} survived (missing or unreadable images, "
            f"bad rows): see 'dropped' in {out / 'prepare_report.json'}"
        )
    return report


def dumps_boxes(boxes: list[list[float]]) -> str:
    return json.dumps([[round(float(v), 2) for v in b] for b in boxes])
