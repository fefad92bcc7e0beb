"""Images and reports in, features out: batched, bad rows counted, cached on disk once.

Evaluation images go through training's deterministic eval pipeline
(``reclf.data.transforms.resize_and_pad``: long side to S, black padding; never a flip).
Unreadable images are skipped and counted (``Encoded.bad``), never silently dropped.
Features depend only on (weights, table, image size, kind), so they are cached under that key in
``cache_dir`` (safetensors) and each task extracts them once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reclf.methods.interface import EvaluableModel
from reclf.models.features import ImageFeatures, TextFeatures


@dataclass
class Encoded:
    """Features of the rows that could be read: ``kept`` indexes the input rows."""

    tensors: dict[str, Tensor]
    kept: np.ndarray
    bad: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)
    grid: tuple[int, int] | None = None


# ---------------------------------------------------------------------------------------------
# pixels


def prepare_image(path: str | Path, size: int) -> np.ndarray:
    """Read an image and bring it to ``[size, size]`` float in [0, 1] exactly as training's eval pipeline."""
    from reclf.data.images import load_image
    from reclf.data.transforms import resize_and_pad, to_tensor

    return resize_and_pad(to_tensor(load_image(path)), size)[0].numpy()


def prepare_mask(path: str | Path, size: int) -> np.ndarray:
    """Read a mask with the same resize + pad as its radiograph; returns bool ``[size, size]``."""
    from reclf.data.images import load_image
    from reclf.data.transforms import resize_and_pad, to_tensor

    binary = (load_image(path) > 0.5).astype(np.float32)
    return resize_and_pad(to_tensor(binary), size)[0].numpy() >= 0.5


def iter_image_batches(
    paths: Sequence[str | Path], size: int, batch_size: int = 32, bad: list | None = None
) -> Iterator[tuple[np.ndarray, Tensor]]:
    """Yield ``(row_indices, images[B,1,S,S])``; unreadable files go to ``bad`` as (row, reason)."""
    from reclf.data.images import ImageReadError

    rows: list[int] = []
    arrays: list[np.ndarray] = []
    for i, p in enumerate(paths):
        try:
            arrays.append(prepare_image(p, size))
            rows.append(i)
        except (ImageReadError, OSError, ValueError) as exc:
            if bad is None:
                raise
            bad.append((i, str(exc)))
        if len(arrays) == batch_size:
            yield np.asarray(rows), torch.from_numpy(np.stack(arrays))[:, None]
            rows, arrays = [], []
    if arrays:
        yield np.asarray(rows), torch.from_numpy(np.stack(arrays))[:, None]


# ---------------------------------------------------------------------------------------------
# caching


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def table_fingerprint(paths: Sequence[str | Path]) -> str:
    """Identity of an image list: the paths plus each file's size and mtime (cheap, catches edits)."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        st = p.stat() if p.exists() else None
        h.update(f"{p}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()[:24]


def cached(cache_dir: str | Path | None, key: str | None, compute: Callable[[], Encoded]) -> Encoded:
    """Return the cached :class:`Encoded` for ``key`` or compute and store it (atomically)."""
    if cache_dir is None or key is None:
        return compute()
    from safetensors.torch import load_file, save_file

    from reclf.utils.io import atomic_path

    path = Path(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
        kept = tensors.pop("__kept__").numpy()
        grid = tuple(json.loads(meta["grid"])) if meta.get("grid", "null") != "null" else None
        return Encoded(tensors, kept, [tuple(b) for b in json.loads(meta.get("bad", "[]"))], grid)
    enc = compute()
    data = {k: v.contiguous() for k, v in enc.tensors.items()}
    data["__kept__"] = torch.as_tensor(enc.kept, dtype=torch.long)
    meta = {"bad": json.dumps(enc.bad), "grid": json.dumps(list(enc.grid) if enc.grid else None)}
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata=meta)
    return enc


# ---------------------------------------------------------------------------------------------
# encoders


@torch.no_grad()
def encode_images(
    model: EvaluableModel, paths: Sequence[str | Path], size: int, batch_size: int = 32, device: str = "cpu",
    cache_dir: str | Path | None = None, model_hash: str | None = None,
) -> tuple[ImageFeatures, Encoded]:
    """Joint-space image features of every readable image (on CPU)."""

    def compute() -> Encoded:
        bad: list = []
        globals_, locals_, kept, grid = [], [], [], None
        for rows, x in iter_image_batches(paths, size, batch_size, bad):
            f = model.encode_image(x.to(device))
            globals_.append(f.global_.float().cpu())
            locals_.append(f.local.float().cpu())
            kept.append(rows)
            grid = tuple(f.grid)
        if not kept:
            raise ValueError(f"none of the {len(paths)} images could be read (first error: {bad[:1]})")
        return Encoded({"global": torch.cat(globals_), "local": torch.cat(locals_)}, np.concatenate(kept), bad, grid)

    key = None if model_hash is None else cache_key("joint", model_hash, table_fingerprint(paths), size)
    enc = cached(cache_dir, key, compute)
    if enc.grid is None:
        raise ValueError(f"the feature cache entry {key} has no region grid; delete {cache_dir} and run again")
    return ImageFeatures(enc.tensors["global"], enc.tensors["local"], enc.grid), enc


@torch.no_grad()
def backbone_features(
    encoder: Any, paths: Sequence[str | Path], size: int, batch_size: int = 32, device: str = "cpu",
    cache_dir: str | Path | None = None, model_hash: str | None = None,
) -> Encoded:
    """The backbone's pooled global feature (``encoder(x).global_``), as the linear probe uses it."""
    was_training = encoder.training
    encoder.eval()

    def compute() -> Encoded:
        bad: list = []
        feats, kept = [], []
        for rows, x in iter_image_batches(paths, size, batch_size, bad):
            feats.append(encoder(x.to(device)).global_.float().cpu())
            kept.append(rows)
        if not kept:
            raise ValueError(f"none of the {len(paths)} images could be read (first error: {bad[:1]})")
        return Encoded({"global": torch.cat(feats)}, np.concatenate(kept), bad)

    key = None if model_hash is None else cache_key("backbone", model_hash, table_fingerprint(paths), size)
    try:
        return cached(cache_dir, key, compute)
    finally:
        encoder.train(was_training)


def _pad_cat(tensors: list[Tensor], dim_len: int, fill: float | int | bool) -> Tensor:
    out = []
    for t in tensors:
        pad = dim_len - t.shape[1]
        if pad:
            shape = list(t.shape)
            shape[1] = pad
            t = torch.cat([t, torch.full(shape, fill, dtype=t.dtype)], dim=1)
        out.append(t)
    return torch.cat(out)


def cat_text_features(parts: list[TextFeatures]) -> TextFeatures:
    """Concatenate text features of different batches, padding the word axis."""
    w = max(p.words.shape[1] for p in parts)
    ww = None
    weights = [p.word_weights.float().cpu() for p in parts if p.word_weights is not None]
    if len(weights) == len(parts):
        ww = _pad_cat(weights, w, 0.0)
    return TextFeatures(
        torch.cat([p.global_.float().cpu() for p in parts]),
        _pad_cat([p.words.float().cpu() for p in parts], w, 0.0),
        _pad_cat([p.word_mask.cpu() for p in parts], w, False),
        _pad_cat([p.sentence_ids.cpu() for p in parts], w, -1),
        [s for p in parts for s in p.word_strings],
        ww,
    )


@torch.no_grad()
def encode_texts(model: EvaluableModel, texts: Sequence[str], batch_size: int = 64) -> TextFeatures:
    """Joint-space features of ``texts`` (batched; the model tokenises with its own tokenizer)."""
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("no texts to encode")
    parts = [model.encode_text(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    return cat_text_features(parts)


@torch.no_grad()
def similarity_matrix(
    fn: Callable[[ImageFeatures, TextFeatures], Tensor], img: ImageFeatures, txt: TextFeatures,
    chunk: int = 64, device: str = "cpu",
) -> Tensor:
    """``fn(img, txt)`` for all pairs, computed over chunks of images so memory stays bounded."""
    out = []
    for i in range(0, len(img), chunk):
        part = img.index(slice(i, i + chunk))
        out.append(fn(_to(part, device), _to(txt, device)).float().cpu())
    return torch.cat(out)


def _to(f: Any, device: str) -> Any:
    if device == "cpu":
        return f
    if isinstance(f, ImageFeatures):
        pw = None if f.patch_weights is None else f.patch_weights.to(device)
        return ImageFeatures(f.global_.to(device), f.local.to(device), f.grid, pw)
    ww = None if f.word_weights is None else f.word_weights.to(device)
    return TextFeatures(f.global_.to(device), f.words.to(device), f.word_mask.to(device),
                        f.sentence_ids.to(device), f.word_strings, ww)
