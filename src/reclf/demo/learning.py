"""Did a method learn? The training loss must fall, and the evaluation must beat chance and the floor."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from reclf.demo.settings import LOSS_DROP


def learning_check(run_dir: str | Path, window: int = 100) -> dict[str, Any]:
    """Mean training loss of the first and the last ``window`` steps (at most a quarter of the run each);
    ``learned``: the last is at most ``LOSS_DROP`` times the first (a loss that stays at ln(batch) means
    nothing was learned)."""
    import csv

    points: dict[int, float] = {}
    path = Path(run_dir) / "metrics.csv"
    if path.is_file():
        with open(path, newline="") as fh:
            for row in csv.reader(fh):
                if len(row) == 4 and row[2] == "train/loss":
                    with contextlib.suppress(ValueError):
                        points[int(row[0])] = float(row[3])
    steps = sorted(points)
    if not steps:
        return {"learned": False, "reason": "no training loss logged"}
    window = max(1, min(window, steps[-1] // 4))  # short runs: the first and last quarter, never overlapping
    first = [points[k] for k in steps if k <= steps[0] + window]
    last = [points[k] for k in steps if k > steps[-1] - window]
    f, l_ = sum(first) / len(first), sum(last) / len(last)
    return {
        "first_loss": round(f, 4),
        "last_loss": round(l_, 4),
        "ratio": round(l_ / f, 4) if f else None,
        "learned": bool(f > 0 and l_ <= LOSS_DROP * f),
        "window": window,
        "steps": steps[-1],
    }


def learning_verdicts(
    merged: dict[str, dict[str, dict[str, Any]]], checks: dict[str, dict[str, Any]]
) -> dict[str, list[str]]:
    """Why each pretrained method did not learn (empty list: it learned), from the loss check and
    the evaluation: a zero-shot interval that contains chance, a linear probe not above the floor."""
    verdicts: dict[str, list[str]] = {}
    floor = (merged.get("linear", {}).get("floor:random") or {}).get("100%/auroc")
    for label, check in checks.items():
        reasons: list[str] = []
        if not check.get("learned", False):
            reasons.append(f"loss did not fall (last/first {check.get('ratio')})")
        zs = (merged.get("zeroshot", {}).get(label) or {}).get("method/accuracy")
        chance = (merged.get("zeroshot", {}).get(label) or {}).get("chance/accuracy")
        if zs and chance and zs.get("ci_low") is not None and zs["ci_low"] <= chance["value"]:
            reasons.append(f"zero-shot interval contains chance ({zs['ci_low']:.3f} <= {chance['value']:.3f})")
        lin = (merged.get("linear", {}).get(label) or {}).get("100%/auroc")
        if lin and floor and lin.get("ci_low") is not None and lin["ci_low"] <= floor["value"]:
            reasons.append(f"linear probe not above the random floor ({lin['ci_low']:.3f} <= {floor['value']:.3f})")
        verdicts[label] = reasons
    return verdicts
