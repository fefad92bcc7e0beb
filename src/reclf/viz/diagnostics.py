"""Figures of the diagnostics task (``reclf.evaluate.tasks.diagnostics``), drawn from results dicts.

- ``importance_by_role``: per model, a box plot of each word's weight relative to uniform
  (weight x number of words; 1 = what uniform weights give) per word role, from the box statistics
  kept in ``extra.role_boxes`` (so no per-word data needs to be stored);
- ``relation_mass``: per model with SRM, the share of a finding word's relation row on its own
  location words against the same-size shuffled word sets, the nearest words, and filler words'
  mass on those location words, with 95 % intervals.
Each function writes one PNG atomically (``viz.figures._save``) and returns its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reclf.viz.figures import _plt, _save

ROLE_ORDER: tuple[str, ...] = ("finding", "location", "severity", "cue", "anatomy", "filler", "header")


def _label(r: dict[str, Any]) -> str:
    m = r.get("model", {})
    return str(m.get("label") or m.get("method") or "?")


def importance_by_role(results: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Box plots of word weight / uniform weight per role, one panel per model that has word weights."""
    plt = _plt()
    runs = [r for r in results if r.get("task") == "diagnostics" and r.get("extra", {}).get("role_boxes")]
    if not runs:
        raise ValueError("importance_by_role: no diagnostics result with word weights (extra.role_boxes)")
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs) + 0.6, 3.4), squeeze=False, sharey=True)
    for ax, r in zip(axes[0], runs, strict=True):
        boxes = r["extra"]["role_boxes"]
        roles = [x for x in ROLE_ORDER if x in boxes] + sorted(set(boxes) - set(ROLE_ORDER))
        stats = [dict(boxes[x], label=f"{x}\n(n={boxes[x]['n']})") for x in roles]
        ax.bxp(stats, showfliers=False, showmeans=True)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_title(_label(r), fontsize=9)
        ax.tick_params(axis="x", labelsize=7, rotation=60)
        ax.set_yscale("log")
    axes[0][0].set_ylabel("word weight / uniform weight")
    fig.suptitle(title or "word importance by role (dashed: uniform)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def relation_mass(results: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Grouped bars: finding -> own location mass vs shuffled, nearest words and filler -> location."""
    import numpy as np

    plt = _plt()
    keys = [("relations/own_mass", "finding→own location"), ("relations/shuffled_mass", "shuffled (chance)"),
            ("relations/nearest_mass", "nearest words"), ("relations/filler_mass", "filler→location")]
    runs = [r for r in results if r.get("task") == "diagnostics" and "relations/own_mass" in r.get("metrics", {})]
    if not runs:
        raise ValueError("relation_mass: no diagnostics result with SRM relations (relations/own_mass)")
    fig, ax = plt.subplots(figsize=(1.6 + 1.8 * len(runs), 3.4))
    width = 0.8 / len(keys)
    x = np.arange(len(runs))
    for k, (key, name) in enumerate(keys):
        vals, lo, hi = [], [], []
        for r in runs:
            m = r["metrics"].get(key) or {}
            v = m.get("value")
            vals.append(np.nan if v is None else v)
            lo.append(np.nan if v is None or m.get("ci_low") is None else v - m["ci_low"])
            hi.append(np.nan if v is None or m.get("ci_high") is None else m["ci_high"] - v)
        ax.bar(x + (k - (len(keys) - 1) / 2) * width, vals, width, yerr=[lo, hi], capsize=2, label=name)
    ax.set_xticks(x, [_label(r) for r in runs], fontsize=8)
    ax.set_ylabel("share of the relation row")
    ax.legend(fontsize=7)
    ax.set_title(title or "SRM: does a finding word attend to its own location words?", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


__all__ = ["importance_by_role", "relation_mass"]
