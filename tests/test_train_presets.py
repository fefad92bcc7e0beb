"""Every shipped preset (reclf/presets) validates and is found by name; demo presets build their model;
full-size ones dry-run."""

from __future__ import annotations

from pathlib import Path

import pytest

from reclf.config import ConfigError, list_presets, load_config, preset_path
from reclf.methods import build_model, list_methods, method_params
from reclf.train.pretrain import dry_run_config, pretrain, validate_train_config

PRESETS = [p.path for p in list_presets()]
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
    assert cfg.image_encoder.image_size == 64 and cfg.text_encoder.name == "minilm" and cfg.text_encoder.freeze
    assert model.text_encoder.cache is not None  # the frozen text side is computed once per report


@pytest.mark.parametrize("path", FULL, ids=lambda p: p.stem)
def test_full_size_preset_builds_with_dry_run_substitutions(path):
    cfg, notes = dry_run_config(load_config(path, ["train.dry_run=true"]))
    assert any("RANDOM-INIT BERT" in n for n in notes)  # Bio_ClinicalBERT is not available offline
    assert cfg.text_encoder.hidden_size == 768 and cfg.image_encoder.weights is None
    build_model(cfg)


@pytest.mark.slow
def test_full_size_dry_run_trains_two_steps_on_cpu():
    result = pretrain(load_config("mimic_mgca_r50", ["train.dry_run=true", "train.progress=false"]))
    assert result.run_dir is None and result.summary["steps"] == 2 and result.summary["status"] == "completed"
    assert result.summary["dry_run_notes"]


def test_presets_ship_inside_the_package_and_the_repository_keeps_no_copy():
    import reclf

    package = Path(reclf.__file__).resolve().parent
    assert len(PRESETS) >= 13 and all(p.parent == package / "presets" for p in PRESETS)
    assert not list((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert all(p.description for p in list_presets())  # `reclf presets` shows the first comment line


def test_a_preset_is_found_by_name_with_or_without_yaml_wherever_the_command_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    by_name, with_suffix = load_config("demo_gloria"), load_config("demo_gloria.yaml")
    assert by_name == with_suffix == load_config(preset_path("demo_gloria"))
    assert by_name.method["name"] == "gloria"


def test_a_path_still_works_and_wins_over_a_preset_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "demo_gloria.yaml"  # an edited copy, passed as a file: the user's file is used
    mine.write_text(preset_path("demo_gloria").read_text().replace("name: demo_gloria", "name: mine"))
    assert load_config("demo_gloria.yaml").name == "mine"
    assert load_config(str(mine)).name == "mine"
    assert load_config("demo_gloria").name == "demo_gloria"  # a bare name is always the shipped preset


def test_an_unknown_name_lists_the_shipped_presets():
    with pytest.raises(ConfigError, match=r"nor a shipped preset.*demo_convirt.*mimic_reclf_vitb16"):
        load_config("demo_clip")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("some/folder/demo_convirt.yaml")
