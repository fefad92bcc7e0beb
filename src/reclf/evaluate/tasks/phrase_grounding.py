"""Phrase grounding (BioViL's MS-CXR protocol): does a phrase's similarity map light up the phrase's boxes?

For every (image, phrase) pair the model encodes the image and the phrase alone; the phrase's map over
the image regions is

- ``similarity`` (default, BioViL's kind of map): for each region, the cosine of its local embedding with
  each word of the phrase, averaged over the phrase's words. BioViL takes the cosine of the phrase's
  pooled embedding with each patch embedding; in reclf the words and the regions share the local joint
  space (the space the local matcher compares them in), so the per-word cosines are the same kind of
  number. Optionally smoothed with a Gaussian on the region grid (``smooth_sigma``; BioViL's inference
  engine uses 1.5 on its 15 x 15 grid), then upsampled to the image with nearest neighbours;
- ``attention``: the method's own word -> region attention (``model.word_region_attention``: its matcher
  with its learned scale, or MGCA's token attention), averaged over the phrase's words.

Metrics per pair (:mod:`reclf.evaluate.metrics`), over the pixels of the radiograph (the padding that
makes a non-square image square is left out):

- ``cnr``: BioViL's contrast-to-noise ratio ``|mean_in - mean_out| / sqrt(var_in + var_out)`` of the map
  inside vs outside the union of the phrase's boxes (``cnr_signed``: without the absolute value, so a map
  that prefers the outside shows as negative);
- ``miou``: the IoU of ``map >= t`` with the boxes, averaged over ``thresholds`` (0.1 ... 0.5). The
  ``similarity`` map is thresholded on its raw cosines, as BioViL does; the ``attention`` map (a
  distribution over regions) after min-max scaling to [0, 1];
- ``pointing_game``: the most similar region overlaps the boxes (region level, as the grounding task).

Each metric is a mean over pairs with a bootstrap interval, overall and per category (MS-CXR's
``category_name``; SynthCXR's finding). Data: a study table whose ``annotations`` hold phrases with
boxes (``reclf prepare ms-cxr``: ``phrase``, ``category``, ``boxes`` as fractions ``[x, y, w, h]`` of the
image file's width and height), or SynthCXR's ``relations/`` folder: the phrases are the sentences of each
study's true caption (``candidates.csv``; sentence k describes annotation k) and the boxes are the
bounding boxes of the exact masks (``region = "mask"``: the masks themselves). Methods without local
features (ConVIRT) get a result saying the task does not apply.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from reclf.evaluate.common import data_info, load_table, model_info
from reclf.evaluate.loading import LoadedModel, image_size_of
from reclf.evaluate.metrics import contrast_to_noise, pointing_game, threshold_iou
from reclf.evaluate.results import TaskResult, format_table, per_item, write_results
from reclf.evaluate.stats import Estimate, mean_ci
from reclf.methods.interface import EvaluableModel

TASK = "phrase-grounding"
MAPS = ("similarity", "attention")
METRICS = ("cnr", "cnr_signed", "miou", "pointing_game")


@dataclass
class PhraseGroundingConfig:
    map: str = "similarity"  # similarity (cosine, BioViL's kind) | attention (the method's word->region attention)
    thresholds: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5])  # mIoU (BioViL)
    smooth_sigma: float = 0.0  # Gaussian on the region grid before upsampling (BioViL: 1.5 on 15 x 15)
    region: str = "box"  # SynthCXR: the bounding box of each exact mask (box) or the mask itself (mask)
    split: str | None = None  # rows of this split only; None: every row (BioViL uses all of MS-CXR)
    max_images: int | None = None
    skip_uncertain: bool = True  # SynthCXR: hedged findings are not grounded
    image_size: int | None = None
    n_boot: int = 1000
    seed: int = 0


@dataclass
class Phrase:
    """One (image, phrase) pair and where its truth lies."""

    row: int  # position in the table
    study_id: str
    phrase: str
    category: str
    boxes: list[list[float]]  # [x, y, w, h] as fractions of the image file's width and height
    mask: str = ""  # SynthCXR: the exact mask (relative to the data folder), used instead of boxes


@dataclass
class PhraseSet:
    phrases: list[Phrase]
    source: str  # "boxes" (MS-CXR layout) or "synthcxr captions"
    skipped: dict[str, dict[str, Any]] = field(default_factory=dict)  # reason -> count, examples

    def skip(self, reason: str, example: str) -> None:
        entry = self.skipped.setdefault(reason, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < 5:
            entry["examples"].append(example)


def _valid_box(box: Any) -> bool:
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        return False
    return bool(np.isfinite([x, y, w, h]).all()) and w > 0 and h > 0 and x < 1 and y < 1 and x + w > 0 and y + h > 0


def read_phrases(df: pd.DataFrame, folder: Path, cfg: PhraseGroundingConfig) -> PhraseSet:
    """The (image, phrase) pairs of a table: phrase annotations with boxes, else SynthCXR's captions.

    Bad annotations (not JSON, a box that is not four numbers with a positive size inside the image) and
    SynthCXR captions whose sentences do not match the annotations one to one are counted by reason and
    skipped, never fatal.
    """
    from reclf.data.reports import split_sentences

    anns_of: list[list[dict[str, Any]]] = []
    out = PhraseSet([], "boxes")
    for sid, text in zip(df["study_id"].astype(str), df["annotations"].fillna("").astype(str)):
        try:
            anns = json.loads(text or "[]")
            if not isinstance(anns, list):
                raise ValueError("not a list")
        except ValueError as exc:
            out.skip("annotations_not_json", f"{sid}: {exc}")
            anns = []
        anns_of.append([a for a in anns if isinstance(a, dict)])
    if any("phrase" in a for anns in anns_of for a in anns):
        for i, (sid, anns) in enumerate(zip(df["study_id"].astype(str), anns_of)):
            for a in anns:
                if "phrase" not in a:
                    continue
                boxes = a.get("boxes") or []
                if not str(a["phrase"]).strip() or not boxes or not all(_valid_box(b) for b in boxes):
                    out.skip("bad_phrase_or_box", f"{sid}: {str(a.get('phrase'))[:40]!r} {boxes!r}"[:120])
                    continue
                out.phrases.append(Phrase(i, sid, str(a["phrase"]).strip(), str(a.get("category", "")),
                                          [[float(v) for v in b] for b in boxes]))
        return out
    cands = folder / "candidates.csv"
    if not cands.is_file():
        raise ValueError(f"{folder}: no annotation has a 'phrase' and there is no candidates.csv; expected a table "
                         "written by `reclf prepare ms-cxr` or SynthCXR's relations/ folder")
    c = pd.read_csv(cands, dtype=str, keep_default_na=False)
    true = c[c["is_correct"].isin(["1", "True", "true"])].drop_duplicates("study_id")
    caption_of = dict(zip(true["study_id"], true["text"]))
    out = PhraseSet([], "synthcxr captions", out.skipped)
    for i, (sid, anns) in enumerate(zip(df["study_id"].astype(str), anns_of)):
        if not anns:
            continue
        caption = caption_of.get(sid)
        if caption is None:
            out.skip("no_true_caption", sid)
            continue
        sentences = split_sentences(caption)
        if len(sentences) != len(anns):
            out.skip("caption_sentences_differ_from_annotations", f"{sid}: {len(sentences)} vs {len(anns)}")
            continue
        for sentence, a in zip(sentences, anns):
            if cfg.skip_uncertain and str(a.get("certainty", "present")) not in ("present", "positive", "1"):
                continue
            if not a.get("mask"):
                out.skip("annotation_without_mask", sid)
                continue
            out.phrases.append(Phrase(i, sid, sentence.strip(), str(a.get("finding", "")), [], str(a["mask"])))
    return out


def _fit(array: np.ndarray, size: int) -> np.ndarray:
    """An image-sized array through the evaluation geometry (resize the long side, pad to a square)."""
    from reclf.data.transforms import resize_and_pad, to_tensor

    return resize_and_pad(to_tensor(np.asarray(array, dtype=np.float32)), size)[0].numpy()


def region_mask(p: Phrase, folder: Path, native: tuple[int, int], size: int, region: str = "box") -> np.ndarray:
    """Bool ``[size, size]``: the phrase's true region in the evaluation geometry of its image."""
    from reclf.data.sources.masks import boxes_to_mask

    if p.mask:
        from reclf.evaluate.features import prepare_mask

        m = prepare_mask(folder / p.mask, size)
        if region == "mask" or not m.any():
            return m
        ys, xs = np.nonzero(m)
        box = np.zeros_like(m)
        box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
        return box
    h, w = native
    pixels = [[b[0] * w, b[1] * h, b[2] * w, b[3] * h] for b in p.boxes]
    return _fit(boxes_to_mask(pixels, (h, w)).astype(np.float32), size) >= 0.5


def applicable(model: EvaluableModel, size: int) -> str | None:
    """None when the model has word-region maps (probed on a blank ``size`` image); else why the task does not
    apply."""
    fn = getattr(model, "word_region_attention", None)
    if fn is None:
        return f"method {model.method} has no word_region_attention"
    try:
        with torch.no_grad():
            img = model.encode_image(torch.zeros(1, 1, size, size))
            fn(img, model.encode_text(["probe"]))
    except ValueError as exc:
        return f"method {model.method} has no word-region maps ({exc})"
    return None


@torch.no_grad()
def phrase_maps(model: EvaluableModel, image: torch.Tensor, phrases: list[str], kind: str = "similarity"
                ) -> np.ndarray:
    """``[P, h, w]``: each phrase's map over the region grid of ``image`` (``[1, C, H, W]`` in [0, 1])."""
    img = model.encode_image(image)
    txt = model.encode_text(list(phrases))
    n = len(phrases)
    mask = txt.word_mask.to(txt.words.device).float()  # [P, W]
    if kind == "attention":
        expanded = replace(img, global_=img.global_.expand(n, -1), local=img.local.expand(n, -1, -1),
                           patch_weights=None if img.patch_weights is None else img.patch_weights.expand(n, -1))
        per_word = model.word_region_attention(expanded, txt).float()  # [P, W, R]
    elif kind == "similarity":
        per_word = torch.einsum("pwd,rd->pwr", F.normalize(txt.words.float(), dim=-1),
                                F.normalize(img.local[0].float(), dim=-1))
    else:
        raise ValueError(f"unknown map {kind!r}; choose one of {', '.join(MAPS)}")
    mean = (per_word * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    return mean.reshape(n, *img.grid).cpu().numpy()


def to_image(grid_map: np.ndarray, size: int, sigma: float = 0.0) -> np.ndarray:
    """A region map at ``[size, size]``: optional Gaussian smoothing on the grid, then nearest upsampling."""
    m = np.asarray(grid_map, dtype=np.float32)
    if sigma > 0:
        from scipy.ndimage import gaussian_filter

        m = gaussian_filter(m, sigma=sigma)
    return F.interpolate(torch.from_numpy(np.ascontiguousarray(m))[None, None], size=(size, size),
                         mode="nearest")[0, 0].numpy()


def pair_metrics(grid_map: np.ndarray, target: np.ndarray, valid: np.ndarray, cfg: PhraseGroundingConfig
                 ) -> dict[str, float]:
    """The four numbers of one (image, phrase) pair (see the module docstring)."""
    up = to_image(grid_map, target.shape[0], cfg.smooth_sigma)
    scaled = up
    if cfg.map == "attention":
        lo, hi = float(up[valid].min()), float(up[valid].max())
        scaled = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
    return {
        "cnr": contrast_to_noise(up, target, valid),
        "cnr_signed": contrast_to_noise(up, target, valid, signed=True),
        "miou": threshold_iou(scaled, target, cfg.thresholds, valid),
        "pointing_game": pointing_game(grid_map, target),
    }


def run_phrase_grounding(loaded: LoadedModel, data: str | Path, out: str | Path | None,
                         cfg: PhraseGroundingConfig) -> TaskResult:
    from reclf.data.images import load_image

    if cfg.map not in MAPS:
        raise ValueError(f"phrase-grounding: unknown map {cfg.map!r}; choose one of {', '.join(MAPS)}")
    if cfg.region not in ("box", "mask"):
        raise ValueError(f"phrase-grounding: unknown region {cfg.region!r}; choose box or mask")
    model = loaded.model
    split = None if cfg.split in (None, "", "all") else cfg.split
    table = load_table(data, require=("annotations",), splits=(split,) if split else None)
    size = cfg.image_size or image_size_of(model)
    config = asdict(cfg) | {"image_size": size}
    reason = applicable(model, size)
    if reason is not None:
        result = TaskResult(TASK, {}, config, model_info(loaded), data_info(table), [cfg.seed],
                            {"not_applicable": reason})
        if out is not None:
            write_results(result, out)
        print(f"{TASK}: not applicable: {reason}")
        return result
    df = table.df if cfg.max_images is None else table.df.iloc[: cfg.max_images]
    pset = read_phrases(df.reset_index(drop=True), table.folder, cfg)
    by_row: dict[int, list[Phrase]] = {}
    for p in pset.phrases:
        by_row.setdefault(p.row, []).append(p)
    values: dict[str, list[float]] = {k: [] for k in METRICS}
    ids: list[str] = []
    cats: list[str] = []
    bad: list[tuple[int, str]] = []
    samples: list[dict[str, Any]] = []
    # a loaded model is in eval mode (evaluate.loading); the maps are computed without gradients
    with torch.no_grad():
        for row, phrases in by_row.items():
            path = table.folder / df.iloc[row]["image_path"]
            try:
                native = load_image(path)
                image = torch.from_numpy(_fit(native, size))[None, None]
                valid = _fit(np.ones_like(native, dtype=np.float32), size) >= 0.5
                targets = [region_mask(p, table.folder, native.shape, size, cfg.region) for p in phrases]
            except (OSError, ValueError) as exc:
                bad.append((row, f"{path}: {exc}"))
                continue
            maps = phrase_maps(model, image, [p.phrase for p in phrases], cfg.map)
            for k, (p, grid_map, target) in enumerate(zip(phrases, maps, targets)):
                if not (target & valid).any():
                    pset.skip("empty_region", f"{p.study_id}: {p.phrase[:40]!r}")
                    continue
                m = pair_metrics(grid_map, target, valid, cfg)
                for name in METRICS:
                    values[name].append(m[name])
                ids.append(f"{p.study_id}/{k}")
                cats.append(p.category or "(none)")
                if len(samples) < 8:
                    samples.append({"study_id": p.study_id, "phrase": p.phrase, "category": p.category} | m)
    if not ids:
        raise ValueError(f"{table.folder}: no (image, phrase) pair could be evaluated "
                         f"({len(pset.phrases)} phrases, {len(bad)} unreadable images, skipped: {pset.skipped})")
    if bad:
        print(f"{TASK}: skipped {len(bad)} images (first: row {bad[0][0]}: {bad[0][1]})")
    metrics: dict[str, Estimate] = {name: mean_ci(np.asarray(values[name]), cfg.n_boot, cfg.seed) for name in METRICS}
    cat_arr = np.asarray(cats)
    per_category = {
        c: {name: mean_ci(np.asarray(values[name])[cat_arr == c], cfg.n_boot, cfg.seed).to_dict() for name in METRICS}
        | {"n": int((cat_arr == c).sum())}
        for c in sorted(set(cats))
    }
    info = data_info(table, None, bad) | {"pairs": len(ids), "phrases_from": pset.source, "skipped": pset.skipped,
                                          "split": split or "all"}
    extra: dict[str, Any] = {
        "per_category": per_category,
        "per_item": {name: per_item(ids, values[name]) for name in METRICS},
        "samples": samples,
        "definitions": {
            "cnr": "|mean_in - mean_out| / sqrt(var_in + var_out) of the phrase's map (BioViL)",
            "miou": f"mean IoU of map >= t with the boxes over t in {list(cfg.thresholds)} "
                    f"({'raw cosine' if cfg.map == 'similarity' else 'min-max scaled attention'})",
            "pointing_game": "the most similar region overlaps the boxes",
        },
    }
    result = TaskResult(TASK, metrics, config, model_info(loaded), info, [cfg.seed], extra)
    if out is not None:
        write_results(result, out)
    print(format_table(result))
    return result
