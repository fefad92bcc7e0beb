"""Cross-modal retrieval: image -> report and report -> image.

- Recall@1/5/10 on instances: a query's right answer is its own pair; identical report texts are
  one instance (any image whose report reads the same is a right answer, as CXR-CLIP merges
  duplicates).
- Precision@5/10/50 on classes (8x200 style): the fraction of the top K of the query's class.
- Median rank of the first right instance.

Reports are read with the training section rule (:func:`reclf.evaluate.common.report_texts`: the model's
``text_encoder.sections``, findings + impression by default, through the same function the training
dataset uses), so retrieval never scores EXAMINATION / INDICATION / COMPARISON headers that training
never saw. Scores are computed over chunks of queries (``chunk`` x all targets at a time), and only the top
K indices and the first-hit rank are kept, so memory stays bounded for any set size. Every score is
defined for one pair at a time (``model.similarity`` uses no statistics of the other candidates), so
the metrics do not depend on ``chunk``. With
``rerank_k`` the costly local / method score re-ranks only each query's global top ``rerank_k``
(the usual two-stage retrieval); the result records which was used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reclf.evaluate.common import data_info, load_table, model_info, model_sections, report_bad, report_texts
from reclf.evaluate.features import encode_images, encode_texts
from reclf.evaluate.loading import LoadedModel, image_size_of
from reclf.evaluate.metrics import hits_matrix, precision_at_k, recall_at_k
from reclf.evaluate.results import TaskResult, format_table, per_item, write_results
from reclf.evaluate.stats import Estimate, bootstrap_ci, mean_ci
from reclf.methods.interface import EvaluableModel


@dataclass
class RetrieveConfig:
    recall_ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    precision_ks: list[int] = field(default_factory=lambda: [5, 10, 50])
    modes: list[str] = field(default_factory=lambda: ["global", "method"])  # global | local | method
    rerank_k: int = 0  # >0: local/method scores re-rank the global top-k only (0: score every pair)
    text_column: str | None = None  # None: the training section rule (report_texts); a column: that column as is
    split: str | None = None
    image_size: int | None = None
    batch_size: int = 32
    chunk: int = 64
    n_boot: int = 1000
    seed: int = 0
    cache_dir: str | None = None


@dataclass
class Ranking:
    topk: np.ndarray  # [Q, K] target indices, best first
    first_hit_rank: np.ndarray  # [Q] 1-based rank of the best-ranked relevant target


@torch.no_grad()
def rank_targets(
    score_chunk: Callable[[slice], torch.Tensor], n_queries: int, k: int, query_group: np.ndarray,
    target_group: np.ndarray, chunk: int = 64,
) -> Ranking:
    """Top-``k`` targets per query and the rank of the first relevant one, chunk by chunk.

    ``score_chunk(slice)`` returns the ``[len(slice), n_targets]`` scores of those queries.
    Ties are broken pessimistically for the rank (a relevant target tied with an irrelevant one
    ranks after it), so a constant scorer cannot look good.
    """
    tops, ranks = [], []
    tg = torch.as_tensor(np.asarray(target_group))
    for i in range(0, n_queries, chunk):
        sl = slice(i, min(i + chunk, n_queries))
        s = score_chunk(sl).float()
        kk = min(k, s.shape[1])
        tops.append(torch.topk(s, kk, dim=1).indices.numpy())
        qg = torch.as_tensor(np.asarray(query_group)[sl])
        rel = tg[None, :] == qg[:, None]
        best_rel = torch.where(rel, s, torch.full_like(s, -float("inf"))).max(1).values
        ranks.append((((s >= best_rel[:, None]) & ~rel).sum(1) + 1).numpy())
    return Ranking(np.concatenate(tops), np.concatenate(ranks))


@torch.no_grad()
def rank_targets_rerank(
    global_chunk: Callable[[slice], torch.Tensor], pair_scores: Callable[[int, torch.Tensor], torch.Tensor],
    n_queries: int, k: int, rerank_k: int, query_group: np.ndarray, target_group: np.ndarray, chunk: int = 64,
) -> Ranking:
    """Rank by the global score, then re-rank each query's top ``rerank_k`` by ``pair_scores(q, targets)``.

    The standard way to retrieve with a costly pairwise (word-region) score: the expensive score
    runs on ``n_queries x rerank_k`` pairs instead of all ``n_queries x n_targets``. Targets
    outside the re-ranked head keep their global order after it. Ties are pessimistic, as in
    :func:`rank_targets`.
    """
    tops, ranks = [], []
    tg = torch.as_tensor(np.asarray(target_group))
    qg_all = np.asarray(query_group)
    for i in range(0, n_queries, chunk):
        sl = slice(i, min(i + chunk, n_queries))
        g = global_chunk(sl).float()
        order = torch.argsort(g, dim=1, descending=True, stable=True)
        kk = min(rerank_k, g.shape[1])
        for r in range(g.shape[0]):
            q = sl.start + r
            cand = order[r, :kk]
            s = pair_scores(q, cand).float().reshape(-1)
            sub = torch.argsort(s, descending=True, stable=True)
            full = torch.cat([cand[sub], order[r, kk:]])
            tops.append(full[:k].numpy())
            rel_c = tg[cand] == int(qg_all[q])
            if rel_c.any():
                best = s[rel_c].max()
                ranks.append(int(((s >= best) & ~rel_c).sum()) + 1)
            else:
                rest = order[r, kk:]
                rel_r = tg[rest] == int(qg_all[q])
                g_rest = g[r, rest]
                best = g_rest[rel_r].max() if rel_r.any() else torch.tensor(-float("inf"))
                ranks.append(kk + int(((g_rest >= best) & ~rel_r).sum()) + 1)
    return Ranking(np.stack(tops), np.asarray(ranks))


def retrieval_metrics(
    ranking: Ranking, q_inst: np.ndarray, t_inst: np.ndarray, q_cls: np.ndarray | None, t_cls: np.ndarray | None,
    recall_ks: list[int], precision_ks: list[int], prefix: str, n_boot: int, seed: int,
    items: dict[str, Any] | None = None, ids: Any = None,
) -> dict[str, Estimate]:
    """Recall@K / Precision@K / median rank of one direction; ``items`` (if given) receives the per-query
    values of every mean metric under its name, keyed by ``ids`` (for paired comparisons)."""
    out: dict[str, Estimate] = {}
    per_query: dict[str, np.ndarray] = {}
    hits = hits_matrix(ranking.topk, q_inst, t_inst)
    for k in recall_ks:
        per_query[f"{prefix}/R@{k}"] = recall_at_k(hits, k)
    if q_cls is not None and t_cls is not None:
        chits = hits_matrix(ranking.topk, q_cls, t_cls)
        for k in precision_ks:
            if k <= chits.shape[1]:
                per_query[f"{prefix}/P@{k}"] = precision_at_k(chits, k)
    for name, values in per_query.items():
        out[name] = mean_ci(values, n_boot, seed)
        if items is not None:
            items[name] = per_item(ids, values)
    out[f"{prefix}/median_rank"] = bootstrap_ci(lambda r: float(np.median(r)), ranking.first_hit_rank.astype(float),
                                                n_boot=n_boot, seed=seed)
    return out


Scorer = Callable[[Any, Any], torch.Tensor]  # (image features, text features) -> [n_img, n_txt]


def _image_query(fn: Scorer, img: Any, txt: Any, q: int, candidates: torch.Tensor) -> torch.Tensor:
    """Image ``q`` against the candidate reports: ``[K]``."""
    return fn(img.index(slice(q, q + 1)), txt.index(candidates))[0]


def _report_query(fn: Scorer, img: Any, txt: Any, q: int, candidates: torch.Tensor) -> torch.Tensor:
    """Report ``q`` against the candidate images: ``[K]``."""
    return fn(img.index(candidates), txt.index(slice(q, q + 1)))[:, 0]


def _image_rows(fn: Scorer, img: Any, txt: Any, rows: slice) -> torch.Tensor:
    """Images ``rows`` against every report."""
    return fn(img.index(rows), txt)


def _report_rows(fn: Scorer, img: Any, txt: Any, rows: slice) -> torch.Tensor:
    """Reports ``rows`` against every image (``[rows, n_img]``)."""
    return fn(img, txt.index(rows)).T


def _scorer(model: EvaluableModel, mode: str) -> Scorer:
    if mode == "global":
        return model.global_similarity
    if mode == "local":
        if not model.has_local:
            raise ValueError(f"method {model.method} has no local matcher; drop 'local' from modes")
        return model.local_similarity
    if mode == "method":
        return model.similarity
    raise ValueError(f"unknown retrieval mode {mode!r}; use global, local or method")


def run_retrieve(loaded: LoadedModel, data: str | Path, out: str | Path | None, cfg: RetrieveConfig) -> TaskResult:
    model = loaded.model
    table = load_table(data, (cfg.split,) if cfg.split else None,
                       require=(cfg.text_column,) if cfg.text_column else ())
    size = cfg.image_size or image_size_of(model)
    img, enc = encode_images(model, table.paths(), size, cfg.batch_size, cache_dir=cfg.cache_dir,
                             model_hash=loaded.sha256)
    report_bad(enc.bad, table)
    df = table.df.iloc[enc.kept].reset_index(drop=True)
    texts = df[cfg.text_column].astype(str).tolist() if cfg.text_column else report_texts(df, model)
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        what = repr(cfg.text_column) if cfg.text_column else f"report ({', '.join(model_sections(model))})"
        raise ValueError(f"{table.folder}: {len(empty)} rows have an empty {what} "
                         f"(first: study {df.loc[empty[0], 'study_id']}); retrieval needs a report per image")
    txt = encode_texts(model, texts)
    _, inst = np.unique(np.asarray(texts), return_inverse=True)  # identical texts = one instance
    cls = df["class"].astype(str).to_numpy() if "class" in df.columns and (df["class"] != "").all() else None
    kmax = max(cfg.recall_ks + cfg.precision_ks)
    n = len(df)
    metrics: dict[str, Estimate] = {}
    modes = [m for m in cfg.modes if m != "local" or model.has_local]
    if not model.has_local and "method" in modes and "global" in modes:
        modes.remove("method")  # for a global-only method, method == global
    items: dict[str, Any] = {}
    for mode in modes:
        fn = _scorer(model, mode)
        if mode != "global" and cfg.rerank_k > 0:
            if cfg.rerank_k < kmax:
                raise ValueError(f"rerank_k={cfg.rerank_k} must be >= the largest K ({kmax})")
            i2t = rank_targets_rerank(lambda sl: model.global_similarity(img.index(sl), txt),
                                      partial(_image_query, fn, img, txt), n, kmax, cfg.rerank_k, inst, inst, cfg.chunk)
            t2i = rank_targets_rerank(lambda sl: model.global_similarity(img, txt.index(sl)).T,
                                      partial(_report_query, fn, img, txt), n, kmax, cfg.rerank_k, inst, inst,
                                      cfg.chunk)
        else:
            i2t = rank_targets(partial(_image_rows, fn, img, txt), n, kmax, inst, inst, cfg.chunk)
            t2i = rank_targets(partial(_report_rows, fn, img, txt), n, kmax, inst, inst, cfg.chunk)
        metrics.update(retrieval_metrics(i2t, inst, inst, cls, cls, cfg.recall_ks, cfg.precision_ks,
                                         f"{mode}/i2t", cfg.n_boot, cfg.seed, items, df["study_id"]))
        metrics.update(retrieval_metrics(t2i, inst, inst, cls, cls, cfg.recall_ks, cfg.precision_ks,
                                         f"{mode}/t2i", cfg.n_boot, cfg.seed, items, df["study_id"]))
    for k in cfg.recall_ks:  # what a random ranking would score, for reading the numbers
        counts = np.bincount(inst)[inst]
        metrics[f"chance/R@{k}"] = Estimate(float(np.mean(1 - _none_hit(n, counts, k))), float("nan"),
                                            float("nan"), n)
    config = asdict(cfg) | {"image_size": size, "modes_run": modes,
                            "two_stage": "local/method scores re-rank the global top rerank_k"
                            if cfg.rerank_k > 0 else "every pair scored"}
    result = TaskResult("retrieve", metrics, config, model_info(loaded), data_info(table, enc.kept, enc.bad),
                        [cfg.seed], {"n_instances": int(inst.max() + 1), "classes": None if cls is None
                                     else sorted(set(cls.tolist())), "per_item": items})
    if out is not None:
        write_results(result, out)
    print(format_table(result))
    return result


def _none_hit(n: int, relevant: np.ndarray, k: int) -> np.ndarray:
    """P(no relevant item among k drawn without replacement from n, ``relevant`` of them relevant)."""
    k = min(k, n)
    out = np.ones(len(relevant))
    for i in range(k):
        out *= np.clip((n - relevant - i) / (n - i), 0.0, 1.0)
    return out
