"""The demo's recipe comes from the shipped presets only: the same config wherever the demo runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from reclf import demo
from reclf.config import list_presets, load_config, preset_path, to_dict


def _decoy_folder(folder: Path, method: str) -> None:
    """A working folder holding what an older demo would have read: configs/ and a same-named file."""
    decoy = "name: decoy\nmethod:\n  name: convirt\nimage_encoder:\n  name: resnet18\ntrain:\n  lr: 0.5\n"
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / f"demo_{method}.yaml").write_text(decoy)
    (folder / f"demo_{method}.yaml").write_text(decoy)
    (folder / f"demo_{method}").write_text(decoy)


@pytest.mark.parametrize("method", demo.METHODS)
def test_demo_config_is_the_same_whatever_the_working_folder(tmp_path, monkeypatch, method):
    synth, runs = tmp_path / "synth", tmp_path / "runs"  # absolute: the working folder must not matter
    configs = []
    for cwd in (tmp_path / "empty", tmp_path / "decoy", Path(demo.__file__).resolve().parent):
        cwd.mkdir(exist_ok=True)
        if cwd.name == "decoy":
            _decoy_folder(cwd, method)
        monkeypatch.chdir(cwd)
        configs.append(to_dict(demo.demo_config(method, 0, demo.QUICK, synth, runs)))
    assert configs[0] == configs[1] == configs[2]


@pytest.mark.parametrize("method", demo.METHODS)
def test_demo_config_is_its_shipped_preset_plus_the_demo_budget(tmp_path, method):
    cfg = demo.demo_config(method, 0, demo.QUICK, tmp_path / "synth", tmp_path / "runs")
    preset = load_config(demo.demo_preset(method))
    assert demo.demo_preset(method) in {p.name for p in list_presets()}
    # the recipe is the preset's ...
    assert cfg.method["name"] == preset.method["name"] == demo.settings.base_method(method)
    assert cfg.image_encoder.name == preset.image_encoder.name
    assert cfg.text_encoder == preset.text_encoder
    assert (cfg.train.lr, cfg.train.weight_decay) == (preset.train.lr, preset.train.weight_decay)
    # ... the budget is the demo's
    assert cfg.train.max_steps == demo.QUICK.pretrain_steps and cfg.data.batch_size == demo.QUICK.pretrain_batch
    assert cfg.image_encoder.image_size == demo.QUICK.image_size


def test_a_missing_preset_is_an_error_not_a_recipe_made_up_in_code(tmp_path, monkeypatch):
    monkeypatch.setattr(demo.settings, "demo_preset", lambda method: f"demo_{method}_not_shipped")
    with pytest.raises(ValueError, match="no shipped preset named 'demo_reclf_not_shipped'"):
        demo.demo_config("reclf", 0, demo.QUICK, tmp_path / "synth", tmp_path / "runs")
    assert preset_path("demo_reclf").is_file()


def test_swapped_reports_are_cached_for_every_run_whose_method_swaps(tmp_path):
    """RECLF's registry preset switches binding negatives on without its YAML naming them: the text cache
    must still hold the swapped reports (they would be encoded at every first sight otherwise)."""
    from reclf.demo.stages import binding_negative_reports

    def cfgs(*methods):
        return [demo.demo_config(m, 0, demo.QUICK, tmp_path / "s", tmp_path / "r") for m in methods]

    reports = ["Small left effusion. Right upper lobe nodule.", "No acute process."]
    assert binding_negative_reports(cfgs("reclf", "convirt"), reports) == [
        "Small right effusion. Left lower lobe nodule."
    ]
    assert binding_negative_reports(cfgs("convirt", "gloria"), reports) == []


def test_a_changed_method_preset_is_a_changed_recipe(tmp_path, monkeypatch):
    """The demo's runs (and every run's config.yaml) carry the registry's preset values, so a change to
    ``PRESETS`` is a changed recipe (refused, never a stale run reused); resolving is idempotent."""
    from reclf.config import recipe
    from reclf.methods import params
    from reclf.utils.markers import changed_keys

    def asked() -> dict:
        return recipe(demo.demo_config("reclf", 0, demo.QUICK, tmp_path / "synth", tmp_path / "runs"))

    before = asked()
    assert before["method"]["srm_topk"] == params.PRESETS["reclf"]["srm_topk"] == 8
    assert "phrase_nodes" not in before["method"]  # off by default: a new switch leaves old recipes alone
    cfg = demo.demo_config("reclf", 0, demo.QUICK, tmp_path / "synth", tmp_path / "runs")
    assert params.resolve_method_section(cfg) == cfg
    monkeypatch.setitem(params.PRESETS, "reclf", {**params.PRESETS["reclf"], "srm_topk": 4})
    assert changed_keys(before, asked()) == ["method.srm_topk: 8 -> 4"]


def test_an_override_back_to_the_default_reaches_the_model(tmp_path):
    """``--set method.binding_negatives=none`` on RECLF (whose preset turns them on) is the value the run trains
    with, after any number of resolutions: the section keeps a value that differs from the preset even when it
    equals the dataclass default (it used to be dropped, and the preset's value came back)."""
    from reclf.methods import params

    overrides = ["method.binding_negatives=none", "method.local_group=0", "method.sentence_edges=false"]
    settings = dataclasses.replace(demo.QUICK, overrides=overrides)
    cfg = demo.demo_config("reclf", 0, settings, tmp_path / "synth", tmp_path / "runs")
    assert cfg.method["binding_negatives"] == "none" and cfg.method["local_group"] == 0
    assert params.resolve_method_section(params.resolve_method_section(cfg)) == cfg
    built = params.method_params(**cfg.method)
    assert (built.binding_negatives, built.local_group, built.sentence_edges) == ("none", 0, False)
    plain = demo.demo_config("reclf", 0, demo.QUICK, tmp_path / "synth", tmp_path / "runs")
    assert "binding_negatives" in plain.method and "lse_gamma" not in plain.method  # no-override sections as before
