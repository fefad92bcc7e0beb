"""``reclf embed --model DIR (--images FOLDER | --table CSV) --out FILE [--local]``: embed your own radiographs.

Every PNG, JPEG and DICOM file of a folder (recursively), or every image of a table, goes through the
model's own evaluation transform (``reclf.methods.inference``: the code evaluation runs) and comes out as
one safetensors file: ``global`` ``[N, d]`` (and with ``--local`` the region embeddings ``local``
``[N, R, d]``, ``R = h * w`` of the grid in the metadata), the ``ids`` of its rows (paths relative to the
folder, or the table's ids) and every unreadable file with its reason in the metadata (``bad``).
:func:`read_embeddings` reads it back. (Parquet would need pyarrow, which reclf does not depend on.)

Unreadable files are counted and named, never fatal. Large folders are done in shards of
``--shard-size`` files written atomically next to the output (``OUT.parts/``) under a key made of the model's
weights hash, the file list (paths, sizes, modification times), the input size and ``--local``: a killed run
restarts where it stopped, and a shard of other weights or files is never reused. The shards are merged
into ``OUT`` (atomically) and removed at the end; rerunning on the same inputs says the output is up to date.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reclf.evaluate.loading import LoadedModel
from reclf.methods.inference import Embeddings, image_size_of

#: The files ``--images`` takes (case-insensitive); other files in the folder are ignored and counted.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
FORMAT = "reclf-embeddings/1"
#: Column names ``--table`` accepts for the image file and for the row's id, in order of preference.
PATH_COLUMNS = ("image_path", "path", "image", "file")
ID_COLUMNS = ("id", "image_id", "dicom_id", "study_id")


@dataclass
class ImageList:
    """The files to process: ``paths[i]`` is named ``ids[i]``; ``ignored``: folder files of other types."""

    paths: list[Path]
    ids: list[str]
    source: str
    ignored: list[str] = field(default_factory=list)


def list_folder(folder: str | Path) -> ImageList:
    """Every PNG / JPEG / DICOM file under ``folder`` (recursively, hidden files skipped), sorted by path;
    ids are the paths relative to the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder}: no such folder")
    paths: list[Path] = []
    ignored: list[Path] = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        (paths if p.suffix.lower() in IMAGE_SUFFIXES else ignored).append(p)
    if not paths:
        raise ValueError(f"--images {folder}: no PNG, JPEG or DICOM files (suffixes {', '.join(IMAGE_SUFFIXES)})")
    return ImageList(paths, [p.relative_to(folder).as_posix() for p in paths], str(folder),
                     [p.relative_to(folder).as_posix() for p in ignored])


def list_table(path: str | Path) -> ImageList:
    """The images of a CSV table (or a study-table folder): the file column (``image_path``, ``path``, ``image``
    or ``file``; relative to the table's folder) and the id column (``id``, ``image_id``, ``dicom_id`` or a unique
    ``study_id``; else the file column)."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        from reclf.data.studies import table_path

        path = table_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--table {path}: no such file")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str, keep_default_na=False)
    col = next((c for c in PATH_COLUMNS if c in df.columns), None)
    if col is None:
        raise ValueError(f"--table {path}: no image column; name it one of {', '.join(PATH_COLUMNS)}")
    files = df[col].astype(str)
    id_col = next((c for c in ID_COLUMNS if c in df.columns and df[c].astype(str).is_unique), None)
    ids = (df[id_col] if id_col else files).astype(str).tolist()
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise ValueError(f"--table {path}: the image {dup!r} is listed twice; give each row a unique id column")
    return ImageList([path.parent / f for f in files], ids, str(path))


# ---------------------------------------------------------------------------------------------
# the file


def write_embeddings(path: str | Path, emb: Embeddings, meta: dict[str, Any], ids_of_bad: list[str]) -> Path:
    """``emb`` as one safetensors file (atomically): tensors ``global`` (+ ``local``), metadata ``ids``,
    ``bad`` (``[[id, reason], ...]``), ``grid`` and ``meta``."""
    from safetensors.torch import save_file

    from reclf.utils.io import atomic_path

    tensors = {"global": emb.global_.contiguous()}
    if emb.local is not None:
        tensors["local"] = emb.local.contiguous()
    info = {"format": FORMAT, "ids": json.dumps(emb.ids), "grid": json.dumps(list(emb.grid) if emb.grid else None),
            "bad": json.dumps([[i, why] for i, (_, why) in zip(ids_of_bad, emb.bad, strict=True)])}
    info |= {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=info)
    return path


@dataclass
class EmbeddingFile:
    """What :func:`read_embeddings` returns: rows named by ``ids``; ``bad``: ``(id, reason)`` of skipped files."""

    ids: list[str]
    global_: torch.Tensor
    local: torch.Tensor | None
    grid: tuple[int, int] | None
    bad: list[tuple[str, str]]
    meta: dict[str, str]


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return dict(fh.metadata() or {})


def read_embeddings(path: str | Path) -> EmbeddingFile:
    """Read a file written by ``reclf embed``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such embeddings file")
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a reclf embeddings file (format {meta.get('format')!r}, expected {FORMAT})")
    tensors = load_file(str(path))
    grid = json.loads(meta.get("grid", "null"))
    return EmbeddingFile(json.loads(meta["ids"]), tensors["global"], tensors.get("local"),
                         tuple(grid) if grid else None, [tuple(b) for b in json.loads(meta.get("bad", "[]"))], meta)


# ---------------------------------------------------------------------------------------------
# the run, in shards


@dataclass
class EmbedSummary:
    out: Path
    inputs: int
    embedded: int
    bad: list[tuple[str, str]]  # (id, reason)
    ignored: list[str]
    shards_reused: int
    up_to_date: bool = False


def run_key(loaded: LoadedModel, images: ImageList, size: int, local: bool, shard_size: int) -> str:
    """What a shard depends on: the weights, the file list (with sizes and times), the input size, ``local``."""
    from reclf.evaluate.features import cache_key, table_fingerprint

    weights = loaded.sha256 or f"unsaved:{id(loaded.model)}"
    return cache_key("embed", weights, table_fingerprint(images.paths), images.ids, size, local, shard_size)[:16]


def embed_files(
    loaded: LoadedModel, images: ImageList, out: str | Path, local: bool = False, batch_size: int = 32,
    shard_size: int = 2048, size: int | None = None, device: str = "cpu", overwrite: bool = False,
    quiet: bool = False,
) -> EmbedSummary:
    """Embed ``images`` into ``out`` (see the module docstring): resumable, bad files counted and named."""
    from reclf.methods.inference import embed_images
    from reclf.utils.console import say

    def log(text: str) -> None:
        if not quiet:
            say(text, "embed")

    out = Path(out)
    if shard_size < 1 or batch_size < 1:
        raise ValueError("--shard-size and --batch-size must be at least 1")
    size = size or image_size_of(loaded.model)
    key = run_key(loaded, images, size, local, shard_size)
    if out.exists():
        try:
            same = read_metadata(out).get("key") == key
        except Exception:  # not a safetensors file: refused below
            same = False
        if same and not overwrite:
            done = read_embeddings(out)
            log(f"{out} is up to date (same weights, files, size): {len(done.ids)} embeddings")
            return EmbedSummary(out, len(images.paths), len(done.ids), done.bad, images.ignored, 0, True)
        if not overwrite:
            raise FileExistsError(f"--out {out} exists (other weights or files); pass --overwrite or another --out")
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    stale = [p for p in parts.glob("*.safetensors") if not p.name.startswith(key + "-")]
    for p in stale:
        p.unlink()
    if stale:
        log(f"removed {len(stale)} shard(s) of an earlier run on other weights or files from {parts}")
    n = len(images.paths)
    n_shards = math.ceil(n / shard_size)
    log(f"{n} images from {images.source} -> {out} ({loaded.label}, {size} px, "
        f"{'global + region' if local else 'global'} embeddings; {n_shards} shard(s) of {shard_size})"
        + (f"; {len(images.ignored)} other files ignored" if images.ignored else ""))
    reused = 0
    n_batches = math.ceil(n / batch_size)
    batch = 0
    for s in range(n_shards):
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        shard = parts / f"{key}-{s:06d}.safetensors"
        if shard.is_file():
            reused += 1
            batch += math.ceil((hi - lo) / batch_size)
            log(f"shard {s + 1}/{n_shards} already done ({shard.name}), skipped")
            continue

        def progress(done: int, total: int, n_bad: int, lo: int = lo) -> None:
            nonlocal batch
            batch += 1
            log(f"batch {min(batch, n_batches)}/{n_batches}: {lo + done}/{n} images"
                + (f", {n_bad} unreadable in this shard" if n_bad else ""))

        emb = embed_images(loaded.model, images.paths[lo:hi], batch_size, local=local, size=size, device=device,
                           ids=images.ids[lo:hi], progress=progress)
        emb.kept = emb.kept + lo
        emb.bad = [(i + lo, why) for i, why in emb.bad]
        write_embeddings(shard, emb, {"kept": emb.kept.tolist(), "bad_rows": [i for i, _ in emb.bad]},
                         [images.ids[i] for i, _ in emb.bad])
    merged = _merge([parts / f"{key}-{s:06d}.safetensors" for s in range(n_shards)])
    meta = {"key": key, "model": loaded.label, "model_path": loaded.path, "model_sha256": loaded.sha256 or "",
            "method": loaded.model.method, "image_size": size, "inputs": n, "source": images.source,
            "ignored": images.ignored}
    bad_ids = [images.ids[i] for i, _ in merged.bad]
    write_embeddings(out, merged, meta, bad_ids)
    for s in range(n_shards):
        (parts / f"{key}-{s:06d}.safetensors").unlink(missing_ok=True)
    try:
        parts.rmdir()
    except OSError:
        pass
    bad = list(zip(bad_ids, [why for _, why in merged.bad], strict=True))
    return EmbedSummary(out, n, len(merged.ids), bad, images.ignored, reused)


def _merge(shards: list[Path]) -> Embeddings:
    """The shards' rows in input order, and their unreadable files."""
    from safetensors.torch import load_file

    ids: list[str] = []
    globals_, locals_, kept = [], [], []
    bad: list[tuple[int, str]] = []
    grid = None
    for path in shards:
        meta = read_metadata(path)
        tensors = load_file(str(path))
        ids += json.loads(meta["ids"])
        kept += json.loads(meta["kept"])
        bad += [(int(i), why) for i, (_, why) in zip(json.loads(meta["bad_rows"]), json.loads(meta["bad"]),
                                                     strict=True)]
        if "global" in tensors and len(tensors["global"]):
            globals_.append(tensors["global"])
            if "local" in tensors:
                locals_.append(tensors["local"])
        grid = json.loads(meta.get("grid", "null")) or grid
    if not globals_:
        raise ValueError(f"none of the images could be read (first error: {bad[0][1] if bad else '?'})")
    return Embeddings(ids, torch.cat(globals_), torch.cat(locals_) if locals_ else None,
                      tuple(grid) if grid else None, np.asarray(kept, dtype=int), bad)


# ---------------------------------------------------------------------------------------------
# the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="exported model folder, run folder or checkpoint")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of PNG / JPEG / DICOM files (searched recursively)")
    src.add_argument("--table", help="CSV with an image_path (or path/image/file) column, paths relative to it")
    parser.add_argument("--out", required=True, help="output file (.safetensors): embeddings + ids")
    parser.add_argument("--local", action="store_true", help="also the region embeddings [N, R, d]")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (32)")
    parser.add_argument("--shard-size", type=int, default=2048,
                        help="images per resumable shard (2048); a killed run restarts at its first missing shard")
    parser.add_argument("--image-size", type=int, default=None, help="input size (default: the model's own)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--overwrite", action="store_true", help="replace an --out made from other weights or files")


def print_bad(bad: list[tuple[str, str]], total: int, who: str, show: int = 20) -> None:
    """Name every unreadable file (the first ``show``), and count them."""
    from reclf.utils.console import say

    if not bad:
        return
    say(f"{len(bad)} of {total} files could not be read (skipped):", who)
    for name, why in bad[:show]:
        say(f"  {name}: {why}", who)
    if len(bad) > show:
        say(f"  ... and {len(bad) - show} more (all are listed in the output)", who)


def run(args: argparse.Namespace) -> int:
    from reclf.evaluate.loading import load_model
    from reclf.utils.console import say

    images = list_folder(args.images) if args.images else list_table(args.table)
    loaded = load_model(args.model, args.device)
    res = embed_files(loaded, images, args.out, args.local, args.batch_size, args.shard_size, args.image_size,
                      args.device, args.overwrite)
    print_bad(res.bad, res.inputs, "embed")
    if not res.up_to_date:
        say(f"wrote {res.out}: {res.embedded} embeddings of {res.inputs} files"
            + (f" ({res.shards_reused} shard(s) from an earlier run)" if res.shards_reused else ""), "embed")
    return 0
