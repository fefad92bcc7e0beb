"""benchmarks/gpu_check.py runs (on a CPU with --tiny), so it is known to work when a GPU is available."""

from __future__ import annotations

import json
import math

import pytest

from helpers.benchmarks import benchmark_module


@pytest.fixture(scope="module")
def gpu_check():
    with benchmark_module("gpu_check") as module:
        yield module


@pytest.mark.parametrize("extra", [[], ["--precision", "bf16", "--checkpoint", "--methods", "reclf"]])
def test_tiny_run_prints_one_row_per_method(gpu_check, tmp_path, capsys, extra):
    out = tmp_path / "check.json"
    rows = gpu_check.main(["--tiny", "--steps", "1", "--device", "cpu", "--out", str(out), *extra])
    methods = [r.method for r in rows]
    assert methods == (["reclf"] if extra else ["reclf", "gloria", "convirt"])
    for r in rows:
        assert r.step_s > 0 and r.pairs_per_s > 0 and r.peak_mib > 0 and math.isfinite(r.loss)
    table = capsys.readouterr().out
    assert all(m in table for m in methods) and "pairs/s" in table
    assert [r["method"] for r in json.loads(out.read_text())["rows"]] == methods


def test_full_size_preset_builds_the_real_shapes(gpu_check):
    import argparse

    args = argparse.Namespace(tiny=False, chunk=8, checkpoint=True)
    model = gpu_check._build("reclf", args)
    assert model.image_encoder.local_grid(224) == (19, 19)  # 224 -> 299 px: 361 regions
    assert model.text_encoder.hidden_size == 768
    assert model.params.checkpoint_chunks
