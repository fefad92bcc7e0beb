"""Images and reports in, features out: batched, bad rows counted, cached on disk once.

Evaluation images go through training's deterministic eval pipeline
(``reclf.data.transforms.resize_and_pad``: long side to S, black padding; never a flip).
Unreadable images are skipped and counted (``Encoded.bad``), never silently dropped.
Features depend only on (weights, table, image size, kind), so they are cached under that key in
``cache_dir`` (safetensors) and each task extracts them once. The reading, batching, encoding and
scoring themselves are ``reclf.methods.inference`` (re-exported here), the code ``reclf embed``,
``reclf classify`` and ``model.embed_images`` / ``model.zero_shot`` run too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reclf.methods.inference import (  # noqa: F401  (re-exported: the tasks import them from here)
    cat_text_features,
    embed_images,
    encode_texts,
    iter_image_batches,
    prepare_image,
    similarity_matrix,
)
from reclf.methods.interface import EvaluableModel
from reclf.models.features import ImageFeatures


@dataclass
class Encoded:
    """Features of the rows that could be read: ``kept`` indexes the input rows."""

    tensors: dict[str, Tensor]
    kept: np.ndarray
    bad: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)
    grid: tuple[int, int] | None = None


# ---------------------------------------------------------------------------------------------
# pixels


def prepare_mask(path: str | Path, size: int) -> np.ndarray:
    """Read a mask with the same resize + pad as its radiograph; returns bool ``[size, size]``."""
    from reclf.data.images import load_image
    from reclf.data.transforms import resize_and_pad, to_tensor

    binary = (load_image(path) > 0.5).astype(np.float32)
    return resize_and_pad(to_tensor(binary), size)[0].numpy() >= 0.5


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
        emb = embed_images(model, paths, batch_size, local=True, size=size, device=device)
        if not len(emb):
            raise ValueError(f"none of the {len(paths)} images could be read (first error: {emb.bad[:1]})")
        assert emb.local is not None
        return Encoded({"global": emb.global_, "local": emb.local}, emb.kept, emb.bad, emb.grid)

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
