"""Every preset in configs/ validates; demo presets build their model; full-size ones dry-run."""

from __future__ import annotations

from pathlib import Path

import pytest

from reclf.config import load_config
from reclf.methods import build_model, list_methods, method_params
from reclf.train.pretrain import dry_run_config, pretrain, validate_train_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(CONFIGS.glob("*.yaml"))
DEMOS = [p for p in PRESETS if p.name.startswith("demo_")]
FULL = [p for p in PRESETS if p.name.startswith("mimic_")]


def test_there_is_a_demo_and_a_mimic_preset_for_every_method():
    names = {p.stem for p in PRESETS}
    for method in list_methods():
        assert f"demo_{method}" in names and f"mimic_{method}_r50" in names
    assert "mimic_reclf_vitb16" in names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_validates(path):
    cfg = load_config(path)
    validate_train_config(cfg)
    params = dict(cfg.method)
    method_params(params.pop("name"), **params)  # method keys are checked here
    assert cfg.name == path.stem


@pytest.mark.parametrize("path", DEMOS, ids=lambda p: p.stem)
def test_demo_preset_builds_its_model(path):
    cfg = load_config(path)
    model = build_model(cfg)
    assert model.method == cfg.method["name"]
    assert cfg.image_encoder.image_size == 128 and cfg.text_encoder.name == "bert-tiny"


@pytest.mark.parametrize("path", FULL, ids=lambda p: p.stem)
def test_full_size_preset_builds_with_dry_run_substitutions(path):
    cfg, notes = dry_run_config(load_config(path, ["train.dry_run=true"]))
    assert any("RANDOM-INIT BERT" in n for n in notes)  # Bio_ClinicalBERT is not available offline
    assert cfg.text_encoder.hidden_size == 768 and cfg.image_encoder.weights is None
    build_model(cfg)


@pytest.mark.slow
def test_full_size_dry_run_trains_two_steps_on_cpu():
    result = pretrain(load_config(CONFIGS / "mimic_mgca_r50.yaml", ["train.dry_run=true", "train.progress=false"]))
    assert result.run_dir is None and result.summary["steps"] == 2 and result.summary["status"] == "completed"
    assert result.summary["dry_run_notes"]
