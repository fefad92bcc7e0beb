"""benchmarks/binding_ceiling.py: the supervised targets it trains on say what the annotations say."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def ceiling():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("binding_ceiling")
    finally:
        sys.path.remove(str(BENCH))


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
