"""Inference on any model of the method interface: files -> pixels -> features -> scores.

One implementation of the steps that evaluation, ``reclf embed``, ``reclf classify`` and the Python
API (``model.preprocess``, ``model.embed_images``, ``model.zero_shot``) share, so that they give the
same numbers:

- pixels: :func:`prepare_image` reads PNG / JPEG / DICOM (``reclf.data.images``) and applies the
  evaluation transform of training (``reclf.data.transforms.resize_and_pad``: long side to the model's
  input size, black padding, never a flip); :func:`iter_image_batches` batches them, and an unreadable
  file is recorded as ``(index, reason)``, never fatal;
- features: :func:`encode_texts` (batched prompts / reports), :func:`embed_images` (images);
- scores: :func:`similarity_matrix` (all pairs, chunked over images), and zero-shot's rules
  (:func:`score_modes`, :func:`prompt_scores`, :func:`class_scores`, :func:`class_score_table`): the
  ones ``reclf evaluate zeroshot`` reports.

Evaluation adds the feature cache, the study tables and the metrics on top (``reclf.evaluate``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reclf.methods.interface import EvaluableModel
from reclf.models.features import ImageFeatures, TextFeatures

#: Called after every batch of :func:`embed_images` with (files done, files in all, unreadable so far).
Progress = Callable[[int, int, int], None]


def image_size_of(model: EvaluableModel, default: int = 128) -> int:
    """The input size the model was built for (its config), else ``default``."""
    cfg = model.config or {}
    enc = cfg.get("image_encoder") if isinstance(cfg, dict) else None
    if isinstance(enc, dict) and isinstance(enc.get("image_size"), int):
        return int(enc["image_size"])
    return default


# ---------------------------------------------------------------------------------------------
# pixels


def prepare_image(path: str | Path, size: int) -> np.ndarray:
    """Read an image and bring it to ``[size, size]`` float in [0, 1] exactly as training's eval pipeline."""
    from reclf.data.images import load_image
    from reclf.data.transforms import resize_and_pad, to_tensor

    return resize_and_pad(to_tensor(load_image(path)), size)[0].numpy()


def preprocess(model: EvaluableModel, path: str | Path, size: int | None = None) -> Tensor:
    """``path`` as the model sees it: ``[1, S, S]`` in [0, 1] at the model's input size (``size`` overrides)."""
    return torch.from_numpy(prepare_image(path, size or image_size_of(model)))[None]


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
# features


@dataclass
class Embeddings:
    """Joint-space embeddings of the images that could be read.

    ``kept`` indexes the input list (row ``k`` of ``global_`` is input ``kept[k]``, named ``ids[k]``);
    ``bad`` holds every unreadable input as ``(index, reason)``.
    """

    ids: list[str]
    global_: Tensor  # [N, d]
    local: Tensor | None  # [N, R, d] region embeddings (with ``local=True``)
    grid: tuple[int, int] | None  # the region grid (h, w), h * w = R
    kept: np.ndarray
    bad: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def features(self) -> ImageFeatures:
        """As :class:`ImageFeatures` (for the model's scores); needs the region embeddings."""
        if self.local is None or self.grid is None:
            raise ValueError("these embeddings have no region embeddings; embed with local=True")
        return ImageFeatures(self.global_, self.local, self.grid)


@torch.no_grad()
def embed_images(
    model: EvaluableModel, paths: Sequence[str | Path], batch_size: int = 32, local: bool = False,
    size: int | None = None, device: str | torch.device | None = None, ids: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> Embeddings:
    """Global (and with ``local``, region) embeddings of the images in ``paths``, in the model's eval transform.

    Unreadable files are skipped and listed in ``Embeddings.bad``; ``ids`` name the inputs (default: the
    paths as given). ``progress(done, total, n_bad)`` is called after every batch.
    """
    model.eval()
    size = size or image_size_of(model)
    device = device if device is not None else _device_of(model)
    names = [str(p) for p in paths] if ids is None else [str(i) for i in ids]
    if len(names) != len(paths):
        raise ValueError(f"{len(names)} ids for {len(paths)} paths")
    bad: list[tuple[int, str]] = []
    globals_, locals_, kept = [], [], []
    grid: tuple[int, int] | None = None
    for rows, x in iter_image_batches(paths, size, batch_size, bad):
        f = model.encode_image(x.to(device))
        globals_.append(f.global_.float().cpu())
        if local:
            locals_.append(f.local.float().cpu())
        kept.append(rows)
        grid = tuple(int(g) for g in f.grid)  # type: ignore[assignment]
        if progress is not None:
            progress(int(rows[-1]) + 1, len(paths), len(bad))
    if progress is not None and (not kept or int(kept[-1][-1]) + 1 < len(paths)):
        progress(len(paths), len(paths), len(bad))  # unreadable files at the end
    d = int(model.embed_dim) if hasattr(model, "embed_dim") else 0
    index = np.concatenate(kept) if kept else np.zeros(0, dtype=int)
    return Embeddings(
        [names[i] for i in index],
        torch.cat(globals_) if globals_ else torch.zeros(0, d),
        (torch.cat(locals_) if locals_ else None) if local else None,
        grid,
        index,
        bad,
    )


def _device_of(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


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


# ---------------------------------------------------------------------------------------------
# scores


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


def score_modes(model: EvaluableModel) -> dict[str, Any]:
    """The similarity rules this model supports (name -> fn(img, txt) -> [I, T])."""
    modes: dict[str, Any] = {"global": model.global_similarity}
    if model.has_local:
        modes["local"] = model.local_similarity
    modes["method"] = model.similarity
    return modes


def _znorm(s: Tensor) -> Tensor:
    return (s - s.mean(0, keepdim=True)) / s.std(0, keepdim=True).clamp_min(1e-6)


def prompt_scores(model: EvaluableModel, img: Any, txt: Any, chunk: int) -> dict[str, Tensor]:
    """``[n_images, n_prompts]`` scores per rule, plus ``fused`` when a local score exists (computed on the model's
    device, chunk by chunk; returned on the CPU)."""
    device = str(_device_of(model))
    out = {name: similarity_matrix(fn, img, txt, chunk, device) for name, fn in score_modes(model).items()}
    if "local" in out:
        out["fused"] = 0.5 * (_znorm(out["global"]) + _znorm(out["local"]))
    return out


def class_scores(scores: Tensor, owner: np.ndarray, n_classes: int, reduce: str) -> Tensor:
    """Reduce ``[N, P]`` prompt scores to ``[N, C]`` class scores (mean or max over each class's prompts)."""
    cols = []
    for c in range(n_classes):
        s = scores[:, torch.as_tensor(owner == c)]
        cols.append(s.max(1).values if reduce == "max" else s.mean(1))
    return torch.stack(cols, 1)


def class_score_table(
    model: EvaluableModel, img: ImageFeatures, class_prompts: Mapping[str, Sequence[str]], reduce: str = "mean",
    chunk: int = 64,
) -> dict[str, Tensor]:
    """``rule -> [n_images, n_classes]`` zero-shot class scores (classes in ``class_prompts`` order).

    Every prompt of every class is scored against every image by each rule of :func:`prompt_scores`; a
    class's score is the mean (or max) over its prompts. ``reclf evaluate zeroshot``, ``reclf classify`` and
    ``model.zero_shot`` all score this way.
    """
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce={reduce!r}: choose mean or max")
    table = prompt_score_table(model, img, class_prompts, chunk)
    return {mode: class_scores(s, table.owner, len(class_prompts), reduce) for mode, s in table.scores.items()}


@dataclass
class PromptScores:
    """Every prompt of every class scored against every image, per rule (before the class reduction)."""

    prompts: list[str]
    owner: np.ndarray  # [P] the class index of each prompt
    scores: dict[str, Tensor]  # rule -> [n_images, P]


def prompt_score_table(
    model: EvaluableModel, img: ImageFeatures, class_prompts: Mapping[str, Sequence[str]], chunk: int = 64
) -> PromptScores:
    """The prompt-level scores behind :func:`class_score_table` (classes in ``class_prompts`` order)."""
    if not class_prompts:
        raise ValueError("no classes to score")
    prompts: list[str] = []
    owner: list[int] = []
    for ci, (name, texts) in enumerate(class_prompts.items()):
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError(f"class {name!r} has no prompts")
        prompts += [str(t) for t in texts]
        owner += [ci] * len(texts)
    txt = encode_texts(model, prompts)
    return PromptScores(prompts, np.asarray(owner), prompt_scores(model, img, txt, chunk))


def length_bias(prompts: Sequence[str], per_rule: Mapping[str, Tensor]) -> dict[str, float]:
    """Per score rule, the Spearman correlation of a prompt's word count with its mean score over all images.

    A pooling that sums over words (log-sum-exp adds up to ``log(#words) / gamma``) favours long prompts
    whatever they say; a rule free of that bias sits near 0 (a prompt set whose long prompts are also the
    better matches can move it either way, so compare rules on the same prompts).
    """
    from scipy.stats import spearmanr

    n_words = np.asarray([len(p.split()) for p in prompts])
    if len(set(n_words.tolist())) < 2:
        return {}
    return {rule: round(float(spearmanr(n_words, s.mean(0).numpy()).statistic), 4) for rule, s in per_rule.items()}


@dataclass
class ZeroShotScores:
    """Zero-shot class scores of the images that could be read (``kept`` indexes the inputs)."""

    classes: list[str]
    scores: dict[str, Tensor]  # rule (global, local, fused, method) -> [N, C]
    ids: list[str]
    kept: np.ndarray
    bad: list[tuple[int, str]] = field(default_factory=list)

    def predictions(self, rule: str = "method") -> list[str]:
        """The best class of every kept image by ``rule`` (``method``: the model's own score)."""
        if rule not in self.scores:
            raise ValueError(f"no {rule!r} scores; choose one of {list(self.scores)}")
        return [self.classes[int(i)] for i in self.scores[rule].argmax(1)]


def zero_shot(
    model: EvaluableModel, images: Sequence[str | Path] | Tensor, class_prompts: Mapping[str, Sequence[str] | str],
    reduce: str = "mean", batch_size: int = 32, chunk: int = 64,
) -> ZeroShotScores:
    """Score ``images`` (files, or a preprocessed ``[B, 1, S, S]`` batch) against ``class_prompts``
    (``{class: [prompts]}``, or one prompt string per class) by every rule of the model."""
    prompts = {str(k): ([v] if isinstance(v, str) else list(v)) for k, v in class_prompts.items()}
    if isinstance(images, Tensor):
        model.eval()
        with torch.no_grad():
            f = model.encode_image(images.to(_device_of(model)))
        img = ImageFeatures(f.global_.float().cpu(), f.local.float().cpu(), tuple(f.grid))
        n = len(images)
        ids, kept, bad = [str(i) for i in range(n)], np.arange(n), []
    else:
        emb = embed_images(model, images, batch_size, local=True)
        if not len(emb):
            raise ValueError(f"none of the {len(images)} images could be read (first error: {emb.bad[:1]})")
        img, ids, kept, bad = emb.features(), emb.ids, emb.kept, emb.bad
    scores = class_score_table(model, img, prompts, reduce, chunk)
    return ZeroShotScores(list(prompts), scores, ids, kept, bad)
