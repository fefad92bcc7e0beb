"""Training learns: ConVIRT and RECLF pretrained on a small SynthCXR with the demo's recipe end clearly above
chance on zero-shot classification. This is the test that fails the day training breaks (a detached
gradient, a wrong label, a text side that never starts), which no shape or unit test would see.

The recipe is the shipped demo preset's (frozen pretrained MiniLM whose outputs are computed once,
small CNN at 64 px, AdamW 1e-3, warm-up + cosine); only the budget is smaller.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from reclf.config import load_config, preset_path
from reclf.data.synthetic.generate import generate
from reclf.evaluate.loading import load_model
from reclf.evaluate.tasks.zeroshot import ZeroShotConfig, run_zeroshot
from reclf.train import pretrain
from reclf.train.text_cache import build_text_cache, corpus_reports

CHANCE = 0.2  # five classes
STEPS = {"convirt": 300, "reclf": 200}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("learn")
    synth = root / "synth"
    generate(synth, n=1600, size=64, per_class=40, seed=0, sets=("pretrain", "zeroshot_5x200"))
    text = load_config(preset_path("demo_convirt")).text_encoder
    cache = root / "text.safetensors"
    build_text_cache(text, corpus_reports([synth / "pretrain"], text.sections), cache, cls_attention=False)
    return synth, cache


@pytest.mark.slow
@pytest.mark.parametrize("method", ["convirt", "reclf"])
def test_pretraining_learns_zero_shot_above_chance(corpus, tmp_path, method) -> None:
    synth, cache = corpus
    cfg = load_config(
        preset_path(f"demo_{method}"),
        [
            f"data.root={synth / 'pretrain'}",
            f"train.runs_dir={tmp_path}",
            f"train.max_steps={STEPS[method]}",
            f"text_encoder.cache_file={cache}",
            "train.progress=false",
            "train.checkpoint_every_n_steps=0",
        ],
    )
    start = time.time()
    result = pretrain(cfg)
    assert result.export_dir is not None
    zs = run_zeroshot(
        load_model(result.export_dir), synth / "zeroshot_5x200", None, ZeroShotConfig(n_boot=300, cache_dir=None)
    )
    acc = zs.metrics["method/accuracy"]
    print(f"{method}: {STEPS[method]} steps, zero-shot {acc.fmt()} in {time.time() - start:.0f} s")
    assert acc.n == 200
    assert acc.value >= 0.35, f"{method} did not learn: zero-shot accuracy {acc.fmt()} (chance {CHANCE})"
    assert acc.ci_low > CHANCE, f"{method}: the zero-shot interval {acc.fmt()} contains chance"
