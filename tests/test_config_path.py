"""Every command resolves its config as ``reclf pretrain`` does (issue 21, item 2): an unknown key is a usage
error (exit 2) naming it and the nearest valid key, and range checks run before any data is read or folder made.
The task registry (item 1) is what the commands read."""

from __future__ import annotations

import pytest

from reclf.cli import main
from reclf.config import ConfigError, load_config


def run_cli(capsys, *argv) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text, text[-2000:]
    return code, text


def test_unknown_key_names_the_nearest_valid_one():
    with pytest.raises(ConfigError, match=r"unknown config key train\.max_stpes \(did you mean train\.max_steps\?\)"):
        load_config("demo_convirt", ["train.max_stpes=3"])


def test_evaluate_unknown_key_exits_2_before_the_model_is_loaded(tmp_path, capsys):
    # the model does not exist: a config error that is reported first proves the config is checked first
    base = ["evaluate", "zeroshot", "--model", tmp_path / "no-model", "--data", tmp_path, "--out", tmp_path / "o"]
    code, text = run_cli(capsys, *base, "n_bot=5")
    assert code == 2 and "n_bot" in text and "did you mean n_boot?" in text
    code, text = run_cli(capsys, *base, "n_boot=0")  # a range, by the registry's rule
    assert code == 2 and "n_boot=0" in text
    code, text = run_cli(capsys, *base, "reduce=median")
    assert code == 2 and "reduce" in text and "mean, max" in text
    # an option the task has no field for is not dropped without a word
    code, text = run_cli(capsys, "evaluate", "grounding", "--model", tmp_path / "m", "--data", tmp_path,
                         "--batch-size", "8")
    assert code == 2 and "batch_size" in text
    assert not (tmp_path / "o").exists()


def test_evaluate_overrides_reach_the_config():
    from reclf.evaluate.cli import task_config

    cfg = task_config("linear", {"fractions": [0.5]}, ["seeds=[3]", "max_steps=7"], cache="c")
    assert (cfg.fractions, cfg.seeds, cfg.max_steps, cfg.cache_dir) == ([0.5], [3], 7, "c")
    assert task_config("segment", {"device": "cuda", "model": "m", "data": "d"}).device == "cuda"  # a field too
    assert task_config("zeroshot", {"cache_dir": ""}).cache_dir is None  # --cache-dir '': no cache (run resolves it)
    cfg = task_config("segment", {"preset": "mgca"}, ["epochs=2", "seg_task=opacity"])
    assert (cfg.preset, cfg.epochs, cfg.loss, cfg.seg_task) == ("mgca", 2, "focal_dice", "opacity")
    with pytest.raises(ConfigError, match="unknown task 'zeroshoot' \\(did you mean zeroshot\\?\\)"):
        task_config("zeroshoot")


def test_demo_unknown_keys_exit_2_with_nothing_written(tmp_path, capsys):
    out, synth = tmp_path / "demo", tmp_path / "synth"
    base = ["demo", "--quick", "--out", out, "--synth", synth, "--methods", "convirt", "--jobs", "1"]
    cases = (
        (["--set", "train.lrr=1"], "train.lr"),
        (["--eval-set", "zeroshot.n_bot=5"], "zeroshot.n_boot"),
        (["--eval-set", "zeroshoot.n_boot=5"], "zeroshot"),
        (["--tasks", "zeroshot,lineer"], "linear"),
        (["--set", "train.betas=[0.9, 1.5]"], "train.betas"),
    )
    for extra, named in cases:
        code, text = run_cli(capsys, *base, *extra)
        assert code == 2 and named in text, (extra, text)
    assert not out.exists() and not synth.exists()


def test_tune_unknown_key_exits_2_with_nothing_written(tmp_path, capsys):
    out = tmp_path / "tune"
    code, text = run_cli(capsys, "tune", "demo_convirt", "--grid", "train.lr=1e-3,1e-2", "--set", "train.lrr=1",
                         "--out", out)
    assert code == 2 and "train.lrr" in text and "did you mean train.lr?" in text
    code, text = run_cli(capsys, "tune", "demo_convirt", "--grid", "train.warmup_fractoin=0.1,0.2", "--out", out)
    assert code == 2 and "did you mean train.warmup_fraction?" in text
    assert not out.exists()


@pytest.mark.parametrize("override", ["train.betas=[0.9, 1.0]", "train.betas=[0.9]", "train.scheduler=step"])
def test_bad_optimiser_settings_fail_before_data_is_read(tmp_path, capsys, override):
    runs = tmp_path / "runs"
    # data.root does not exist: reading it would be the error; the config's is reported instead
    code, text = run_cli(capsys, "pretrain", "demo_convirt", override, f"data.root={tmp_path / 'no-data'}",
                         f"train.runs_dir={runs}", "train.max_steps=1")
    assert code == 2 and override.split("=")[0] in text and "no-data" not in text
    assert not runs.exists()


def test_a_config_built_in_code_is_checked_before_data_is_read(tmp_path):
    from reclf.train.pretrain import pretrain

    cfg = load_config("demo_convirt", [f"data.root={tmp_path / 'no-data'}", f"train.runs_dir={tmp_path / 'runs'}"])
    cfg.train.betas = [0.9, 1.5]
    with pytest.raises(ConfigError, match=r"train\.betas"):
        pretrain(cfg)
    assert not (tmp_path / "runs").exists()


def test_the_commands_read_the_task_registry():
    import argparse

    from reclf.demo import settings
    from reclf.evaluate import report
    from reclf.evaluate.cli import add_arguments
    from reclf.evaluate.tasks import TASKS

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {*TASKS, "baseline"}
    assert settings.TASKS == tuple(TASKS) and report.TASK_ORDER == tuple(TASKS)
    for spec in TASKS.values():  # every entry resolves: its module, config class and runner exist
        assert callable(spec.runner)
        assert spec.make_config() == (spec.config_class() if not spec.builder else spec.make_config({}))
        assert set(spec.choices) <= set(spec.field_names())


def test_the_docs_task_table_lists_every_registered_task():
    from pathlib import Path

    from reclf.evaluate.tasks import TASKS

    table = (Path(__file__).resolve().parents[1] / "docs" / "evaluation.md").read_text()
    missing = [name for name in TASKS if f"| `{name}` |" not in table]
    assert not missing, f"docs/evaluation.md (## Tasks) has no row for {missing}"
