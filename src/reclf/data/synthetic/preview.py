"""A montage of SynthCXR studies with mask outlines and report excerpts, to check the data by eye."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from reclf.data.studies import read_studies
from reclf.utils.io import atomic_path

#: One outline colour per finding key.
COLOURS = {
    "atelectasis": "#ffd400",
    "cardiomegaly": "#ff66cc",
    "consolidation": "#ff3b30",
    "edema": "#34c759",
    "pleural_effusion": "#00c7ff",
    "pneumothorax": "#ff9500",
    "pneumonia": "#af52de",
    "lung_lesion": "#ff2d55",
    "support_devices": "#5ac8fa",
}


def pick_rows(folder: Path, count: int):
    """Abnormal studies first (varied findings), then a few normals, in table order."""
    df = read_studies(folder)
    seen: set[str] = set()
    chosen: list[int] = []
    for i, text in enumerate(df["annotations"]):
        kinds = {a["finding"] for a in json.loads(text)}
        if kinds and not kinds <= seen:
            chosen.append(i)
            seen |= kinds
        if len(chosen) >= count - 2:
            break
    normals = [i for i, t in enumerate(df["annotations"]) if t == "[]"][:2]
    rest = [i for i in range(len(df)) if i not in chosen and i not in normals]
    idx = (chosen + normals + rest)[:count]
    return df.iloc[idx]


def write_preview(root: Path, path: Path, set_name: str = "pretrain", count: int = 12) -> Path:
    """Write a ``count``-image montage of ``root/set_name`` to ``path`` (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(root) / set_name
    rows = pick_rows(folder, count)
    cols = 4
    nrows = int(np.ceil(len(rows) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(cols * 4.0, nrows * 5.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (_, row) in zip(axes.ravel(), rows.iterrows(), strict=False):
        img = np.asarray(Image.open(folder / row["image_path"]).convert("L"))
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        names = []
        for ann in json.loads(row["annotations"]):
            mask = np.asarray(Image.open(folder / ann["mask"])) > 0
            colour = COLOURS.get(ann["finding"], "#ffffff")
            ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=0.9)
            names.append(f"{ann['finding']} {ann['side']}/{ann['zone']}/{ann['severity']}")
        excerpt = textwrap.fill(row["impression"][:150], 52)
        finding_text = textwrap.fill(row["findings"][:260], 52)
        title = f"{row['study_id']} {row['view']}  |  " + ("; ".join(names) or "normal")
        ax.set_title(textwrap.fill(title, 52), fontsize=7)
        ax.text(0, 1.0, "", transform=ax.transAxes)
        ax.text(
            0.0,
            -0.02,
            f"F: {finding_text}\nI: {excerpt}",
            transform=ax.transAxes,
            fontsize=6,
            va="top",
            ha="left",
            wrap=True,
        )
    fig.suptitle("SynthCXR preview - image LEFT = patient RIGHT (PA convention)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path
