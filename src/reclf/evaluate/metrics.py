"""The metrics of the evaluation suite as small pure functions (NumPy in, NumPy out).

Each returns per-item values where that is meaningful, so that :mod:`reclf.evaluate.stats` can
bootstrap them, and every convention (empty masks, ties, undefined AUROC) is stated here once.
"""

from __future__ import annotations

import numpy as np

from reclf.utils.maps import upsample_map

# ---------------------------------------------------------------------------------------------
# classification


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else float("nan")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray | None = None) -> float:
    """Unweighted mean of per-class F1 over ``labels`` (default: classes present in y_true).

    A class with no true and no predicted items has F1 = 0 only if it is listed in ``labels``.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not len(y_true):
        return float("nan")
    classes = np.unique(y_true) if labels is None else np.asarray(labels)
    f1s = []
    for c in classes:
        tp = float(((y_pred == c) & (y_true == c)).sum())
        fp = float(((y_pred == c) & (y_true != c)).sum())
        fn = float(((y_pred != c) & (y_true == c)).sum())
        denom = 2 * tp + fp + fn
        f1s.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1s))


def auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Binary AUROC (Mann-Whitney, ties count 1/2); NaN when only one class is present."""
    y_true = np.asarray(y_true).astype(bool)
    score = np.asarray(score, dtype=float)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based, ties share their average rank
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean AUROC over the label columns that hold both classes (NaN labels masked out per column)."""
    y_true, scores = np.asarray(y_true, dtype=float), np.asarray(scores, dtype=float)
    values = []
    for j in range(y_true.shape[1]):
        keep = ~np.isnan(y_true[:, j])
        a = auroc(y_true[keep, j] > 0.5, scores[keep, j])
        if not np.isnan(a):
            values.append(a)
    return float(np.mean(values)) if values else float("nan")


# ---------------------------------------------------------------------------------------------
# retrieval


def hits_matrix(topk: np.ndarray, query_group: np.ndarray, target_group: np.ndarray) -> np.ndarray:
    """``[Q, K]`` bool: is the k-th retrieved target relevant (same group id as the query)?

    Instance retrieval uses one group per distinct text (so duplicate reports all count as the
    right answer); class retrieval uses the class label as the group.
    """
    return np.asarray(target_group)[np.asarray(topk)] == np.asarray(query_group)[:, None]


def recall_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Per query: 1 if any of the top ``k`` is relevant."""
    return hits[:, :k].any(axis=1).astype(float)


def precision_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Per query: the fraction of the top ``k`` that is relevant."""
    return hits[:, :k].mean(axis=1).astype(float)


# ---------------------------------------------------------------------------------------------
# segmentation


def dice_iou(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of boolean masks ``[N, H, W]``.

    Empty-mask convention: an image whose true mask is empty scores 1 when the prediction is also
    empty and 0 otherwise. Report both the mean over all images and over positives only
    (:func:`positives`), because the field uses both.
    """
    pred = np.asarray(pred).astype(bool).reshape(len(pred), -1)
    target = np.asarray(target).astype(bool).reshape(len(target), -1)
    inter = (pred & target).sum(1).astype(float)
    p, t = pred.sum(1).astype(float), target.sum(1).astype(float)
    union = p + t - inter
    both_empty = (p + t) == 0
    dice = np.where(both_empty, 1.0, 2 * inter / np.maximum(p + t, 1))
    iou = np.where(both_empty, 1.0, inter / np.maximum(union, 1))
    return dice, iou


def positives(target: np.ndarray) -> np.ndarray:
    """Bool ``[N]``: images whose true mask is not empty."""
    target = np.asarray(target).astype(bool)
    return np.asarray(target.reshape(len(target), -1).any(1))


# ---------------------------------------------------------------------------------------------
# grounding


def mask_to_grid(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Bool ``grid``: a region counts as inside the mask if any mask pixel falls in it (adaptive max pool)."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    return F.adaptive_max_pool2d(t, grid)[0, 0].numpy() > 0


def pointing_game(attn: np.ndarray, mask: np.ndarray) -> float:
    """1 if the attention's most attended region overlaps the mask, else 0.

    Computed at the attention's own resolution (the model can only point at a region): the mask
    is max-pooled onto the region grid. Comparing an upsampled map's peak pixel with a small
    lesion would instead penalise coarse grids for where inside a region the peak happens to be.
    """
    attn = np.asarray(attn, dtype=float)
    mask = np.asarray(mask).astype(bool)
    grid_mask = mask if attn.shape == mask.shape else mask_to_grid(mask, attn.shape)
    idx = np.unravel_index(int(np.argmax(attn)), attn.shape)
    return float(grid_mask[idx])


def attention_iou(attn: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """IoU between the mask and the attention map min-max scaled to [0, 1] and cut at ``threshold``."""
    mask = np.asarray(mask).astype(bool)
    up = upsample_map(attn, mask.shape) if np.asarray(attn).shape != mask.shape else np.asarray(attn, dtype=float)
    lo, hi = float(up.min()), float(up.max())
    scaled = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
    region = scaled >= threshold
    union = (region | mask).sum()
    return float((region & mask).sum() / union) if union else 1.0


def contrast_to_noise(score_map: np.ndarray, mask: np.ndarray, valid: np.ndarray | None = None,
                      signed: bool = False) -> float:
    """BioViL's contrast-to-noise ratio of a phrase's map: ``|mean_in - mean_out| / sqrt(var_in + var_out)``.

    ``in`` are the pixels inside the true region (MS-CXR: the union of the phrase's boxes), ``out`` the
    other pixels of the image; ``valid`` (optional) restricts both to the pixels that belong to the
    radiograph (the padding of a non-square image is neither inside nor outside). Population variances.
    ``signed=True`` drops the absolute value (negative: the map prefers the outside). NaN when either side
    is empty or when both sides are constant with different values (no noise: the ratio is undefined);
    0 when the map is constant.
    """
    score_map = np.asarray(score_map, dtype=float)
    mask = np.asarray(mask).astype(bool)
    keep = np.ones_like(mask) if valid is None else np.asarray(valid).astype(bool)
    inside, outside = score_map[mask & keep], score_map[~mask & keep]
    if not inside.size or not outside.size:
        return float("nan")
    diff = float(inside.mean() - outside.mean())
    noise = float(np.sqrt(inside.var() + outside.var()))
    if noise == 0.0:
        return 0.0 if diff == 0.0 else float("nan")
    return diff / noise if signed else abs(diff) / noise


def threshold_iou(score_map: np.ndarray, mask: np.ndarray, thresholds: tuple[float, ...] | list[float],
                  valid: np.ndarray | None = None) -> float:
    """Mean over ``thresholds`` of the IoU between ``score_map >= t`` and the true region (BioViL's mIoU).

    Only ``valid`` pixels count (see :func:`contrast_to_noise`). A threshold that selects nothing
    scores 0 against a non-empty region; the caller decides the scale of ``score_map`` (raw cosine or
    min-max scaled) and says so.
    """
    score_map = np.asarray(score_map, dtype=float)
    mask = np.asarray(mask).astype(bool)
    keep = np.ones_like(mask) if valid is None else np.asarray(valid).astype(bool)
    target = mask & keep
    ious = []
    for t in thresholds:
        pred = (score_map >= t) & keep
        union = int((pred | target).sum())
        ious.append(float((pred & target).sum()) / union if union else 1.0)
    return float(np.mean(ious)) if ious else float("nan")
