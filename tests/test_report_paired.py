"""Paired differences in the report pair the same item *and* pretraining seed, over every seed."""

from __future__ import annotations

from reclf.evaluate.report import paired_differences


def result(label: str, values: list[float]) -> dict:
    ids = [f"img{i}" for i in range(len(values))]
    return {"task": "zeroshot", "model": {"label": label},
            "extra": {"per_item": {"method/accuracy": {"ids": ids, "values": values}}}}


def cell(lines: list[str], other: str) -> str:
    row = next(line for line in lines if line.startswith(f"| {other} |"))
    return row.split("|")[2].strip()


def test_differences_pool_items_over_the_seeds_both_methods_have():
    results = [
        result("reclf@seed0", [1, 1, 1, 1]), result("reclf@seed1", [1, 1, 0, 0]),
        result("gloria@seed0", [0, 0, 0, 0]), result("gloria@seed1", [1, 1, 0, 0]),
        result("floor:random", [0, 0, 0, 0]),
    ]
    lines = paired_differences(results, n_boot=200)
    # seed 0: +1 on 4 items, seed 1: 0 on 4 items -> mean +0.5 over the 8 (seed, item) pairs
    assert cell(lines, "gloria").startswith("+0.500")
    assert "over 2 seed(s)" in "\n".join(lines)
    assert not any(line.startswith("| floor") for line in lines)


def test_a_seed_only_one_method_has_is_left_out():
    results = [result("reclf@seed0", [1, 0]), result("reclf@seed1", [0, 0]), result("convirt@seed0", [0, 0])]
    assert cell(paired_differences(results, n_boot=100), "convirt").startswith("+0.500")
