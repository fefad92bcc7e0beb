"""Grounding: does a finding word's attention land inside the finding's true mask?

For every image with annotations (SynthCXR: one mask per finding, the ``annotations`` JSON
column: ``finding``, ``side``, ``zone``, ``mask``), the model explains its own report
(``model.explain``); the words naming the finding (its synonyms, :mod:`reclf.data.synthetic.vocab`,
or the finding key's words) are located in the report and their word->region attention maps
averaged. Metrics over (image, finding) pairs:
- pointing game: the most attended region overlaps the mask (region level, see metrics.pointing_game);
- attention-mask IoU: the attention map min-max scaled and cut at 0.5, against the mask.
Findings whose words are not in the report (a paraphrase the matcher misses) are counted and
reported, never silently dropped. Methods whose explanation has no word-region attention
(ConVIRT: global only) get a result saying the task does not apply. MGCA's token-level
attention counts as a matcher here.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reclf.evaluate.common import data_info, load_table, model_info
from reclf.evaluate.features import prepare_image, prepare_mask
from reclf.evaluate.loading import LoadedModel, image_size_of
from reclf.evaluate.metrics import attention_iou, pointing_game
from reclf.evaluate.results import TaskResult, format_table, write_results
from reclf.evaluate.stats import Estimate, mean_ci

_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class GroundingConfig:
    threshold: float = 0.5  # attention cut for the IoU
    max_images: int | None = None  # None: every annotated image
    skip_uncertain: bool = True  # hedged findings ("may represent") are not grounded
    image_size: int | None = None
    n_boot: int = 1000
    seed: int = 0


def finding_phrases(finding: str) -> list[list[str]]:
    """Word sequences that name ``finding`` in a report (synonyms first, longest first)."""
    phrases: list[str] = []
    try:
        from reclf.data.synthetic.vocab import FINDING_SYNONYMS

        phrases += FINDING_SYNONYMS.get(finding, [])
    except ImportError:  # pragma: no cover - vocab ships with the package
        pass
    phrases.append(finding.replace("_", " "))
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


def run_grounding(loaded: LoadedModel, data: str | Path, out: str | Path | None, cfg: GroundingConfig) -> TaskResult:
    model = loaded.model
    table = load_table(data, require=("annotations",))
    size = cfg.image_size or image_size_of(model)
    config = asdict(cfg) | {"image_size": size}

    def not_applicable() -> TaskResult:
        reason = f"method {getattr(model, 'method', '?')} has no word-region attention (no local matcher)"
        result = TaskResult("grounding", {}, config, model_info(loaded), data_info(table), [cfg.seed],
                            {"not_applicable": reason})
        if out is not None:
            write_results(result, out)
        print(f"grounding: not applicable: {reason}")
        return result

    hits, ious, kinds, bad, unmatched, samples = [], [], [], [], 0, []
    rows = table.df if cfg.max_images is None else table.df.iloc[: cfg.max_images]
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
        with torch.no_grad():
            ex = model.explain(image, str(row["report"]))
        if ex.attention is None:
            return not_applicable()
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
    if not hits:
        raise ValueError(f"{table.folder}: no annotated finding could be located in its report "
                         f"({unmatched} unmatched, {len(bad)} unreadable rows)")
    if bad:
        print(f"grounding: skipped {len(bad)} rows (first: row {bad[0][0]}: {bad[0][1]})")
    metrics: dict[str, Estimate] = {
        "pointing_game": mean_ci(np.asarray(hits), cfg.n_boot, cfg.seed),
        "attention_iou": mean_ci(np.asarray(ious), cfg.n_boot, cfg.seed),
    }
    kinds_arr = np.asarray(kinds)
    per_finding: dict[str, Any] = {
        k: {"pointing_game": float(np.mean(np.asarray(hits)[kinds_arr == k])),
            "attention_iou": float(np.mean(np.asarray(ious)[kinds_arr == k])), "n": int((kinds_arr == k).sum())}
        for k in sorted(set(kinds))
    }
    info = data_info(table, None, bad) | {"pairs": len(hits), "unmatched_findings": unmatched}
    result = TaskResult("grounding", metrics, config, model_info(loaded), info, [cfg.seed],
                        {"per_finding": per_finding, "samples": samples})
    if out is not None:
        write_results(result, out)
    print(format_table(result))
    return result
