"""Figures for reports and explanations (matplotlib, Agg backend: no display needed).

- ``bar_chart``: one bar per method with its 95 % interval;
- ``attention_overlays``: the image with each word's word->region attention on top;
- ``shaded_report``: the report's words shaded by importance (RECLF's IRM weights);
- ``relation_matrix``: SRM's relation (attention) matrix between the matchings, node 0 = global.
Every function writes one PNG atomically and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    from reclf.utils.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _plt().close(fig)
    return path


REFERENCE_STYLES = {"chance": ("#d62728", ":"), "floor": ("#7f7f7f", "--"), "ceiling": ("#2ca02c", "--")}


def bar_chart(labels: Sequence[str], values: Sequence[float], lows: Sequence[float], highs: Sequence[float],
              title: str, path: str | Path, ylabel: str = "", references: dict[str, float] | None = None) -> Path:
    """Bars with asymmetric 95 % interval whiskers (NaN intervals drawn without whiskers).

    ``references``: horizontal reference lines by name (``chance``, ``floor``, ``ceiling``), so a bar is
    read against what no learning, a random encoder and direct supervision give.
    """
    plt = _plt()
    v = np.asarray(values, dtype=float)
    lo = np.asarray(lows, dtype=float)
    hi = np.asarray(highs, dtype=float)
    err = np.vstack([np.where(np.isnan(lo), 0, v - lo), np.where(np.isnan(hi), 0, hi - v)])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(labels) + 1.5), 3.2))
    colors = ["#9e9e9e" if str(lab).startswith(("floor", "ceiling")) else "#3b75af" for lab in labels]
    ax.bar(range(len(v)), np.nan_to_num(v), yerr=np.clip(err, 0, None), capsize=3, color=colors)
    ax.set_xticks(range(len(v)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    for name, value in (references or {}).items():
        color, style = REFERENCE_STYLES.get(name, ("#000000", "-."))
        ax.axhline(value, color=color, ls=style, lw=1.2, label=f"{name} {value:.3f}")
    if references:
        ax.legend(fontsize=7, loc="best")
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def loss_curves(runs: Mapping[str, str | Path], path: str | Path, smooth: int = 10) -> Path:
    """Training loss against step for each run (``label -> run folder`` with ``metrics.csv``), smoothed by a
    running mean over ``smooth`` logged points, so a flat curve (nothing learned) is seen at a glance."""
    import csv

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, folder in runs.items():
        steps, values = [], []
        csv_path = Path(folder) / "metrics.csv"
        if not csv_path.is_file():
            continue
        with open(csv_path, newline="") as fh:
            for row in csv.reader(fh):
                if len(row) == 4 and row[2] == "train/loss":
                    try:
                        steps.append(int(row[0]))
                        values.append(float(row[3]))
                    except ValueError:
                        continue
        if not values:
            continue
        v = np.asarray(values)
        k = max(1, min(smooth, len(v)))
        smoothed = np.convolve(v, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smoothed / smoothed[0], label=label, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss / its first value")
    ax.set_title("pretraining loss (running mean)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def attention_overlays(image: np.ndarray, attention: np.ndarray, words: Sequence[str], path: str | Path,
                       title: str = "", max_words: int = 12) -> Path:
    """The image, then one panel per word with its attention map (bilinear to image size) overlaid."""
    from reclf.utils.maps import upsample_map

    plt = _plt()
    n = min(len(words), max_words, len(attention))
    cols = min(n + 1, 5)
    rows = math.ceil((n + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(image, cmap="gray", vmin=0, vmax=1)
    axes.flat[0].set_title("image", fontsize=8)
    for k in range(n):
        ax = axes.flat[k + 1]
        amap = upsample_map(np.asarray(attention[k], dtype=np.float32), image.shape)
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.imshow(amap, cmap="jet", alpha=0.45)
        ax.set_title(str(words[k]), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def shaded_report(words: Sequence[str], weights: Sequence[float] | np.ndarray, path: str | Path, title: str = "",
                  per_line: int = 10) -> Path:
    """The words as text, each on a background whose strength is its (max-scaled) importance."""
    plt = _plt()
    import matplotlib

    w = np.asarray(weights, dtype=float)
    scaled = w / w.max() if len(w) and w.max() > 0 else np.zeros_like(w)
    lines = math.ceil(len(words) / per_line) or 1
    fig, ax = plt.subplots(figsize=(9, 0.45 * lines + 0.6))
    ax.axis("off")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, lines)
    cmap = matplotlib.colormaps["Reds"]
    for i, word in enumerate(words):
        r, c = divmod(i, per_line)
        ax.text(0.01 + c * (0.98 / per_line), lines - r - 0.5, str(word), fontsize=9, va="center",
                bbox={"boxstyle": "round,pad=0.2", "facecolor": cmap(0.05 + 0.6 * scaled[i]), "edgecolor": "none"})
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def relation_matrix(relations: np.ndarray, labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Heat map of an ``[N, N]`` relation matrix with the node labels on both axes."""
    plt = _plt()
    r = np.asarray(relations, dtype=float)
    n = r.shape[0]
    fig, ax = plt.subplots(figsize=(0.35 * n + 2.5, 0.35 * n + 2.0))
    im = ax.imshow(r, cmap="viridis")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(list(labels)[:n], rotation=90, fontsize=7)
    ax.set_yticklabels(list(labels)[:n], fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title or "SRM relations (row attends to column)", fontsize=9)
    return _save(fig, path)
