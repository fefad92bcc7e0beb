"""benchmarks/binding_ceiling.py: the supervised targets it trains on say what the annotations say."""

from __future__ import annotations

import json

import pytest

from helpers.benchmarks import benchmark_module


@pytest.fixture()
def ceiling():
    with benchmark_module("binding_ceiling") as module:
        yield module


def test_targets_mark_presence_and_each_side(ceiling):
    from reclf.data.synthetic.vocab import FINDINGS

    ann = json.dumps(
        [
            {"finding": "consolidation", "side": "left", "zone": "middle"},
            {"finding": "atelectasis", "side": "right", "zone": "lower"},
            {"finding": "pleural_effusion", "side": "bilateral", "zone": "lower"},
            {"finding": "cardiomegaly", "side": "none", "zone": "none"},
        ]
    )
    y = ceiling.targets(ann)
    assert y.shape == (len(FINDINGS), 3)
    row = {f: y[FINDINGS.index(f)].tolist() for f in FINDINGS}
    assert row["consolidation"] == [1, 1, 0]
    assert row["atelectasis"] == [1, 0, 1]
    assert row["pleural_effusion"] == [1, 1, 1]
    assert row["cardiomegaly"] == [1, 0, 0]
    assert y.sum() == 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1  # nothing else is marked
