"""Grounding: does a finding word's attention land inside the finding's true mask?

For every image with annotations (SynthCXR: one mask per finding, the ``annotations`` JSON
column: ``finding``, ``side``, ``zone``, ``mask``), the model explains its own report
(``model.explain``); the words naming the finding (its synonyms, :mod:`reclf.data.synthetic.vocab`,
or the finding key's words) are located in the report and their word->region attention maps
averaged. Metrics over (image, finding) pairs:
- pointing game: the most attended region overlaps the mask (region level, see metrics.pointing_game);
- attention-mask IoU: the attention map min-max scaled and cut at 0.5, against the mask.
Findings whose words are not in the report (a paraphrase the matcher misses) are counted and
reported, never silently dropped. The report is read with the training section rule
(:func:`reclf.evaluate.common.report_texts`).

The result also records how flat the maps are: ``attention_entropy`` is the mean over (image, word) of
the normalised entropy of the word's map over the regions (1 = uniform, 0 = one region;
:func:`attention_entropy`), on every evaluated image with its own report. A value near 1 means the
method's context vectors are close to the mean region (docs/methods.md) — a finding to
report, not to hide. Methods whose explanation has no word-region attention
(ConVIRT: global only) get a result saying the task does not apply. MGCA's token-level
attention counts as a matcher here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reclf.evaluate.baselines import FLOOR_SEED
from reclf.evaluate.common import data_info, load_table, model_info, report_texts
from reclf.evaluate.features import prepare_image, prepare_mask
from reclf.evaluate.loading import LoadedModel, image_size_of
from reclf.evaluate.metrics import attention_iou, pointing_game
from reclf.evaluate.results import TaskResult, format_table, write_results
from reclf.evaluate.stats import Estimate, mean_ci
from reclf.methods.interface import EvaluableModel

_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class GroundingConfig:
    threshold: float = 0.5  # attention cut for the IoU
    max_images: int | None = None  # None: every annotated image
    skip_uncertain: bool = True  # hedged findings ("may represent") are not grounded
    image_size: int | None = None
    n_boot: int = 1000
    seed: int = 0
    floor: bool = True  # also score a random-init twin of the same architecture (``floor/*`` metrics)
    floor_seed: int = FLOOR_SEED  # its initialisation: the same for every method


def finding_phrases(finding: str) -> list[list[str]]:
    """Word sequences that name ``finding`` in a report (synonyms first, longest first)."""
    from reclf.data.synthetic.vocab import FINDING_SYNONYMS

    phrases = [*FINDING_SYNONYMS.get(finding, []), finding.replace("_", " ")]
    seqs = [_WORD.findall(p.lower()) for p in phrases]
    return sorted([s for s in seqs if s], key=len, reverse=True)


def locate(words: list[str], phrases: list[list[str]]) -> list[int]:
    """Indices of the first occurrence of the first phrase found in ``words`` (normalised); [] if none."""
    norm = [" ".join(_WORD.findall(w.lower())) for w in words]
    for seq in phrases:
        n = len(seq)
        for i in range(len(norm) - n + 1):
            if norm[i : i + n] == seq:
                return list(range(i, i + n))
    # fall back to the phrase's head noun alone (its last word)
    for seq in phrases:
        if seq[-1] in norm:
            return [norm.index(seq[-1])]
    return []


@dataclass
class AttentionEntropy:
    """How flat a model's word -> region attention is on a set of image-report pairs."""

    mean: float  # mean over pairs of each pair's mean over its valid words
    per_pair: list[float]  # mean over the words of each pair
    n_words: int
    n_regions: int


def attention_entropy(model: EvaluableModel, images: Tensor, reports: Sequence[str],
                      batch_size: int = 16) -> AttentionEntropy:
    """Mean normalised entropy of the word -> region attention of ``model`` on paired ``images[i]``-``reports[i]``.

    The attention is the method's own (``model.explain_pairs``, i.e. ``word_region_attention``: its matcher with
    its learned scale, or MGCA's token attention); the entropy of each word's map is divided by ``log R``
    (:func:`reclf.align.matching.normalized_entropy`). ``images`` are ``[N, C, H, W]`` in [0, 1].
    """
    from reclf.align.matching import normalized_entropy

    if len(images) != len(reports):
        raise ValueError(f"attention_entropy: {len(images)} images but {len(reports)} reports; pass pairs")
    if not len(reports):
        raise ValueError("attention_entropy: no image-report pairs")
    per_pair: list[float] = []
    count, n_regions = 0, 0
    for i in range(0, len(reports), batch_size):
        ex = model.explain_pairs(images[i : i + batch_size], list(reports[i : i + batch_size]))
        if ex.attention is None:
            raise ValueError(f"attention_entropy: method {model.method} has no word-region attention")
        for attn in ex.attention:  # [n, R]
            n_regions = attn.shape[-1]
            if attn.shape[0]:
                per_pair.append(float(normalized_entropy(attn.float()).mean()))
                count += int(attn.shape[0])
    if not count:
        raise ValueError("attention_entropy: no report has a valid word")
    return AttentionEntropy(float(np.mean(per_pair)), per_pair, count, n_regions)


@dataclass
class Pointing:
    """What one model's attention does on the annotated findings (before it becomes metrics)."""

    hits: list[float]
    ious: list[float]
    kinds: list[str]
    samples: list[dict[str, Any]]
    entropy: AttentionEntropy


def _point(model: EvaluableModel, items: list[tuple[Any, Tensor, list[Any], list[np.ndarray], str]],
           cfg: GroundingConfig) -> tuple[Pointing | None, int]:
    """Pointing game and IoU of ``model`` on ``items`` (row, image, annotations, masks, report text); ``None``
    when the method has no word-region attention. Also the number of findings not located in their report."""
    hits: list[float] = []
    ious: list[float] = []
    kinds: list[str] = []
    samples: list[dict[str, Any]] = []
    unmatched = 0
    for row, image, anns, masks, text in items:
        with torch.no_grad():
            ex = model.explain(image, text)
        if ex.attention is None:
            return None, 0
        attn = ex.attention.float().cpu().numpy()
        for ann, mask in zip(anns, masks):
            if not mask.any():
                continue
            idx = locate(list(ex.words), finding_phrases(str(ann.get("finding", ""))))
            if not idx:
                unmatched += 1
                continue
            amap = attn[idx].mean(0)
            hits.append(pointing_game(amap, mask))
            ious.append(attention_iou(amap, mask, cfg.threshold))
            kinds.append(str(ann.get("finding", "")))
            if len(samples) < 8:
                samples.append({"study_id": str(row["study_id"]), "finding": kinds[-1],
                                "words": [ex.words[j] for j in idx], "hit": hits[-1], "iou": ious[-1]})
    entropy = attention_entropy(model, torch.stack([it[1][0] for it in items]), [it[4] for it in items]) \
        if items else AttentionEntropy(float("nan"), [], 0, 0)
    return Pointing(hits, ious, kinds, samples, entropy), unmatched


def run_grounding(loaded: LoadedModel, data: str | Path, out: str | Path | None, cfg: GroundingConfig) -> TaskResult:
    from reclf.evaluate.baselines import FLOOR_MEANING, floor_model

    model = loaded.model
    table = load_table(data, require=("annotations",))
    size = cfg.image_size or image_size_of(model)
    config = asdict(cfg) | {"image_size": size}

    def not_applicable() -> TaskResult:
        reason = f"method {model.method} has no word-region attention (no local matcher)"
        result = TaskResult("grounding", {}, config, model_info(loaded), data_info(table), [cfg.seed],
                            {"not_applicable": reason})
        if out is not None:
            write_results(result, out)
        print(f"grounding: not applicable: {reason}")
        return result

    bad: list[tuple[Any, str]] = []
    items: list[tuple[Any, Tensor, list[Any], list[np.ndarray], str]] = []
    rows = table.df if cfg.max_images is None else table.df.iloc[: cfg.max_images]
    texts = dict(zip(rows.index, report_texts(rows, model)))
    for i, row in rows.iterrows():
        try:
            anns = json.loads(row["annotations"] or "[]")
        except json.JSONDecodeError as exc:
            bad.append((i, f"annotations are not JSON: {exc}"))
            continue
        anns = [a for a in anns if a.get("mask") or a.get("mask_path")]
        if cfg.skip_uncertain:
            anns = [a for a in anns if str(a.get("certainty", "present")) in ("present", "positive", "1")]
        if not anns:
            continue
        try:
            image = torch.from_numpy(prepare_image(table.folder / row["image_path"], size))[None, None]
            masks = [prepare_mask(table.folder / (a.get("mask") or a["mask_path"]), size) for a in anns]
        except (OSError, ValueError) as exc:
            bad.append((i, str(exc)))
            continue
        items.append((row, image, anns, masks, texts[i]))
    found, unmatched = _point(model, items, cfg)
    if found is None:
        return not_applicable()
    if not found.hits:
        raise ValueError(f"{table.folder}: no annotated finding could be located in its report "
                         f"({unmatched} unmatched, {len(bad)} unreadable rows)")
    if bad:
        print(f"grounding: skipped {len(bad)} rows (first: row {bad[0][0]}: {bad[0][1]})")

    def measured(p: Pointing) -> dict[str, Estimate]:
        return {"pointing_game": mean_ci(np.asarray(p.hits), cfg.n_boot, cfg.seed),
                "attention_iou": mean_ci(np.asarray(p.ious), cfg.n_boot, cfg.seed),
                "attention_entropy": mean_ci(np.asarray(p.entropy.per_pair), cfg.n_boot, cfg.seed)}

    metrics = measured(found)
    hits, ious, kinds, entropy = found.hits, found.ious, found.kinds, found.entropy
    kinds_arr = np.asarray(kinds)
    per_finding: dict[str, Any] = {
        k: {"pointing_game": float(np.mean(np.asarray(hits)[kinds_arr == k])),
            "attention_iou": float(np.mean(np.asarray(ious)[kinds_arr == k])), "n": int((kinds_arr == k).sum())}
        for k in sorted(set(kinds))
    }
    info = data_info(table, None, bad) | {"pairs": len(hits), "unmatched_findings": unmatched}
    extra: dict[str, Any] = {"per_finding": per_finding, "samples": found.samples}
    extra["attention_entropy"] = {
        "mean": entropy.mean, "n_words": entropy.n_words, "n_images": len(entropy.per_pair),
        "n_regions": entropy.n_regions,
        "meaning": "normalised entropy of word->region attention: 1 uniform, 0 one region",
    }
    floor = floor_model(loaded, cfg.floor_seed) if cfg.floor else None
    if floor is not None:
        twin, _ = _point(floor, items, cfg)
        if twin is not None and twin.hits:
            metrics |= {f"floor/{k}": v for k, v in measured(twin).items()}
        extra["floor"] = {"seed": cfg.floor_seed, "meaning": FLOOR_MEANING}
    else:
        extra["floor"] = {"not_measured": "floor off" if not cfg.floor
                          else "the model is itself a baseline or does not rebuild as a reclf method"}
    result = TaskResult("grounding", metrics, config, model_info(loaded), info, [cfg.seed], extra)
    if out is not None:
        write_results(result, out)
    print(format_table(result))
    return result
