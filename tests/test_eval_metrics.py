"""Every metric against a case computed by hand."""

import numpy as np
import pytest
import torch

from reclf.evaluate.metrics import (
    accuracy,
    attention_iou,
    auroc,
    dice_iou,
    hits_matrix,
    macro_auroc,
    macro_f1,
    pointing_game,
    positives,
    precision_at_k,
    recall_at_k,
)
from reclf.evaluate.stats import Estimate, bootstrap_ci, mean_ci, summarise_seeds
from reclf.evaluate.tasks.retrieve import rank_targets, rank_targets_rerank


def test_recall_and_precision_at_k_by_hand():
    # 2 queries, 4 targets; query 0 belongs to group 2, query 1 to group 0
    topk = np.array([[1, 2, 3, 0], [0, 3, 1, 2]])
    target_group = np.array([0, 1, 2, 0])
    hits = hits_matrix(topk, np.array([2, 0]), target_group)
    assert hits.tolist() == [[False, True, False, False], [True, True, False, False]]
    assert recall_at_k(hits, 1).tolist() == [0.0, 1.0]
    assert recall_at_k(hits, 2).tolist() == [1.0, 1.0]
    assert precision_at_k(hits, 2).tolist() == [0.5, 1.0]
    assert precision_at_k(hits, 4).tolist() == [0.25, 0.5]


def test_rank_targets_chunked_matches_full_and_is_pessimistic_on_ties():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.2, 0.8], [0.3, 0.7, 0.1]])
    groups = np.array([0, 1, 2])  # the right target of query i is target i
    r = rank_targets(lambda sl: scores[sl], 3, 2, groups, groups, chunk=2)
    assert r.topk.tolist() == [[0, 2], [2, 0], [1, 0]] or r.topk.tolist() == [[0, 2], [2, 1], [1, 0]]
    # query 0: target 0 best -> rank 1; query 1: target 1 ties with target 0 (0.2) behind 0.8 -> rank 3
    # query 2: target 2 (0.1) is last -> rank 3
    assert r.first_hit_rank.tolist() == [1, 3, 3]


def test_dice_iou_with_the_empty_mask_convention():
    gt = np.zeros((3, 2, 2), bool)
    pred = np.zeros((3, 2, 2), bool)
    gt[0, 0, :] = True  # 2 pixels
    pred[0, 0, 0] = True
    pred[0, 1, 1] = True  # 1 overlap, 2 predicted
    pred[2, 0, 0] = True  # image 2: empty truth, one false positive; image 1: both empty
    dice, iou = dice_iou(pred, gt)
    assert dice.tolist() == pytest.approx([2 * 1 / 4, 1.0, 0.0])
    assert iou.tolist() == pytest.approx([1 / 3, 1.0, 0.0])
    assert positives(gt).tolist() == [True, False, False]


def test_pointing_game_and_attention_iou():
    mask = np.zeros((4, 4), bool)
    mask[:2, 2:] = True  # top right quadrant
    attn = np.array([[0.0, 1.0], [0.0, 0.0]])  # 2x2 grid, top-right cell hot
    assert pointing_game(attn, mask) == 1.0
    assert pointing_game(np.array([[1.0, 0.0], [0.0, 0.0]]), mask) == 0.0
    full = np.zeros((4, 4))
    full[:2, 2:] = 1.0  # same resolution: exact overlap
    assert attention_iou(full, mask) == 1.0
    half = np.zeros((4, 4))
    half[:2, 3] = 1.0  # covers half of the mask
    assert attention_iou(half, mask) == pytest.approx(0.5)


def test_classification_metrics_by_hand():
    y, p = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1])
    assert accuracy(y, p) == 0.5
    # F1: class0 = 2/3 (tp1 fn1), class1 = 2*1/(2+2+0)=0.5 (tp1 fp2), class2 = 0
    assert macro_f1(y, p, labels=np.arange(3)) == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auroc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert np.isnan(auroc(np.array([1, 1]), np.array([0.1, 0.2])))
    Y = np.array([[0, 1], [1, np.nan], [1, 0], [0, 1]], dtype=float)
    S = np.array([[0.1, 0.9], [0.9, 0.0], [0.8, 0.2], [0.2, 0.6]])
    assert macro_auroc(Y, S) == pytest.approx(1.0)


def test_bootstrap_interval_contains_point_and_is_seeded():
    gen = np.random.default_rng(0)
    v = gen.uniform(size=50)
    e = mean_ci(v, n_boot=200, seed=3)
    assert e.ci_low <= e.value <= e.ci_high
    assert e.value == pytest.approx(v.mean())
    assert e.ci_high - e.ci_low > 0
    assert mean_ci(v, n_boot=200, seed=3) == e
    skewed = np.array([0.0] * 49 + [1.0])
    s = bootstrap_ci(lambda a: float(np.median(a)), skewed, n_boot=100, seed=0)
    assert s.ci_low <= s.value <= s.ci_high
    agg = summarise_seeds([Estimate(0.5, 0.4, 0.6, 10), Estimate(0.7, 0.6, 0.8, 10)])
    assert agg.value == pytest.approx(0.6) and agg.std == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert agg.ci_low == pytest.approx(0.5) and agg.ci_high == pytest.approx(0.7) and agg.seeds == 2


def test_rerank_over_all_targets_equals_full_ranking():
    gen = torch.Generator().manual_seed(0)
    glob = torch.rand(7, 9, generator=gen)
    pair = torch.rand(7, 9, generator=gen)
    groups = np.array([0, 1, 2, 3, 4, 5, 6, 0, 1])
    qg = np.arange(7)
    full = rank_targets(lambda sl: pair[sl], 7, 5, qg, groups, chunk=3)
    rr = rank_targets_rerank(lambda sl: glob[sl], lambda q, c: pair[q, c], 7, 5, 9, qg, groups, chunk=3)
    assert np.array_equal(full.topk, rr.topk) and np.array_equal(full.first_hit_rank, rr.first_hit_rank)
    # re-ranking only the global top 2: a right answer outside them keeps its global rank (> 2)
    head = rank_targets_rerank(lambda sl: glob[sl], lambda q, c: pair[q, c], 7, 5, 2, qg, groups, chunk=3)
    by_global = rank_targets(lambda sl: glob[sl], 7, 5, qg, groups, chunk=3)
    outside = by_global.first_hit_rank > 2
    assert np.array_equal(head.first_hit_rank[outside], by_global.first_hit_rank[outside])
    assert (head.first_hit_rank[~outside] <= 2).all()


def test_pointing_game_is_region_level_on_coarse_grids():
    mask = np.zeros((8, 8), bool)
    mask[1, 6] = True  # a one-pixel lesion inside the top-right region of a 2x2 grid
    assert pointing_game(np.array([[0.1, 0.9], [0.0, 0.0]]), mask) == 1.0
    assert pointing_game(np.array([[0.9, 0.1], [0.0, 0.0]]), mask) == 0.0


def test_report_summary_table_merges_seeds_and_falls_back_to_global():
    from reclf.evaluate.report import merge_seeds, summary_table

    def res(label, task, metrics):
        return {"task": task, "model": {"label": label},
                "metrics": {k: {"value": v, "ci_low": None, "ci_high": None, "n": 10} for k, v in metrics.items()}}

    results = [
        res("reclf@seed0", "zeroshot", {"method/accuracy": 0.30}),
        res("reclf@seed1", "zeroshot", {"method/accuracy": 0.40}),
        res("convirt@seed0", "zeroshot", {"global/accuracy": 0.20}),
    ]
    lines = summary_table(merge_seeds(results))
    assert lines[2] == "| model | zero-shot acc |"
    assert "| convirt | 0.200 |" in lines
    assert "| reclf | 0.350 ± 0.071 |" in lines
    # seeds that agree exactly (a tie in every item) are still a mean over seeds, not one seed's interval
    ties = [res(f"bag@seed{k}", "zeroshot", {"method/accuracy": 0.5}) for k in range(3)]
    for r in ties:
        r["metrics"]["method/accuracy"].update(ci_low=0.5, ci_high=0.5)
    assert "| bag | 0.500 ± 0.000 |" in summary_table(merge_seeds(ties))


def test_paired_difference_aligns_items_by_id_and_resamples_pairs() -> None:
    from reclf.evaluate.stats import paired_difference

    rng = np.random.default_rng(0)
    base = rng.random(400)
    a = (base < 0.7).astype(float)
    b = a.copy()
    b[:40] = 1 - b[:40]  # b differs from a on 40 items only
    ids = [f"s{i}" for i in range(400)]
    d = paired_difference(ids, a, ids[::-1], b[::-1], n_boot=300)  # order does not matter, ids do
    assert d.n == 400 and d.value == pytest.approx(a.mean() - b.mean())
    assert d.ci_low <= d.value <= d.ci_high and d.ci_high - d.ci_low < 0.1  # far narrower than either interval
    # items on one side only are dropped
    assert paired_difference(ids[:10], a[:10], ids[5:], b[5:], n_boot=10).n == 5
