"""Bootstrap confidence intervals and seed summaries.

Every number the evaluation reports carries an interval: a percentile bootstrap over the test
items (images, queries, pairs) for a single run, and mean +- std over seeds where a task trains
something (linear probe, segmentation). The bootstrap is seeded, so a rerun reproduces its
interval exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Estimate:
    """A metric with its 95 % interval (``ci_low <= value <= ci_high``) and how it was obtained."""

    value: float
    ci_low: float
    ci_high: float
    n: int  # items the metric was computed on
    std: float | None = None  # across seeds, when the value is a mean over seeds
    seeds: int | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}

    def fmt(self, digits: int = 3) -> str:
        if self.value is None or math.isnan(self.value):
            return "n/a"
        core = f"{self.value:.{digits}f}"
        if self.std is not None:
            core += f" ± {self.std:.{digits}f}"
        if not (math.isnan(self.ci_low) or math.isnan(self.ci_high)):
            core += f" [{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]"
        return core


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Estimate:
    """Percentile bootstrap of ``metric(*arrays)``, resampling the first axis of all arrays together.

    Resamples on which the metric is undefined (NaN, e.g. an AUROC drawn with one class only) are
    dropped. The reported interval always contains the point estimate: when the percentile
    interval of a very skewed metric misses it, the interval is widened to include it (so it is
    never narrower than the honest point), and the widening is visible as an endpoint equal to
    the value.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"bootstrap_ci: arrays have different lengths {[len(a) for a in arrays]}")
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    value = float(metric(*arrays))
    gen = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = gen.integers(0, n, size=n)
        s = float(metric(*(a[idx] for a in arrays)))
        if not math.isnan(s):
            stats.append(s)
    if not stats or math.isnan(value):
        return Estimate(value, float("nan"), float("nan"), n)
    lo, hi = np.quantile(np.asarray(stats), [alpha / 2, 1 - alpha / 2])
    return Estimate(value, float(min(lo, value)), float(max(hi, value)), n)


def mean_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Bootstrap interval of the mean of per-item scores (Dice per image, hit per query, ...)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return bootstrap_ci(lambda v: float(v.mean()) if len(v) else float("nan"), values, n_boot=n_boot, seed=seed)


def paired_difference(
    ids_a: Sequence, values_a: Sequence, ids_b: Sequence, values_b: Sequence, n_boot: int = 1000, seed: int = 0
) -> Estimate:
    """``mean(a) - mean(b)`` over the items both share (same ids), with a paired bootstrap interval.

    Two models evaluated on the same test items are compared item by item: the items are resampled
    together, so what the interval measures is the difference, not each model's own sampling noise
    (a difference can be clearly positive while both intervals overlap). Items missing on either
    side or NaN are dropped; ``n`` is the number of pairs used.
    """
    vb = dict(zip(map(str, ids_b), values_b, strict=True))
    pairs = [(a, vb[str(i)]) for i, a in zip(ids_a, values_a, strict=True) if str(i) in vb]
    x = np.asarray([np.nan if a is None else a for a, _ in pairs], dtype=float)
    y = np.asarray([np.nan if b is None else b for _, b in pairs], dtype=float)
    ok = ~(np.isnan(x) | np.isnan(y))
    return bootstrap_ci(lambda d: float(d.mean()) if len(d) else float("nan"), x[ok] - y[ok], n_boot=n_boot, seed=seed)


def summarise_seeds(per_seed: Sequence[Estimate]) -> Estimate:
    """Mean +- std over seeds; the interval is the mean of the per-seed interval endpoints.

    The std (ddof=1 when there are at least two seeds) is the spread due to the seed (subset,
    initialisation); the interval is the typical sampling uncertainty of one run on this test set.
    """
    values = np.asarray([e.value for e in per_seed], dtype=float)
    ok = ~np.isnan(values)
    if not ok.any():
        return Estimate(float("nan"), float("nan"), float("nan"), 0, std=float("nan"), seeds=len(per_seed))
    mean = float(values[ok].mean())
    std = float(values[ok].std(ddof=1)) if ok.sum() > 1 else 0.0
    lows = np.asarray([e.ci_low for e in per_seed], dtype=float)[ok]
    highs = np.asarray([e.ci_high for e in per_seed], dtype=float)[ok]
    lo = float(np.nanmean(lows)) if not np.isnan(lows).all() else float("nan")
    hi = float(np.nanmean(highs)) if not np.isnan(highs).all() else float("nan")
    if not math.isnan(lo):
        lo, hi = min(lo, mean), max(hi, mean)
    n = int(max(e.n for e in per_seed))
    return Estimate(mean, lo, hi, n, std=std, seeds=int(ok.sum()))
