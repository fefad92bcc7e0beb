"""The demo knows the recipe it ran (issue 21, items 3 and 9): a changed recipe is refused, naming what changed,
never reused; a killed pretraining run is resumed from its last checkpoint; the report names the recipe (and the
resumed runs) that produced its numbers. A tiny SynthCXR and 2-4 pretraining steps, in this process."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from reclf.cli import main
from reclf.demo import cli as demo_cli
from reclf.demo import settings
from reclf.utils.markers import changed_keys, fingerprint, read_marker, write_marker

TINY = replace(settings.QUICK, synth_n=40, synth_per_class=2, classification_n=30, pretrain_steps=2,
               pretrain_batch=4, linear_fractions=[1.0], segment_fractions=[1.0], supervised_epochs=1,
               prompts_per_class=2, n_boot=10)


def test_markers_key_on_the_recipe_and_the_data(tmp_path):
    a = {"train": {"max_steps": 30, "lr": 1e-3}, "seed": 0}
    assert fingerprint(a) == fingerprint({"seed": 0, "train": {"lr": 1e-3, "max_steps": 30}})  # key order
    b = {"train": {"max_steps": 400, "lr": 1e-3}, "seed": 0}
    assert fingerprint(a) != fingerprint(b) and changed_keys(a, b) == ["train.max_steps: 30 -> 400"]
    write_marker(tmp_path / "m.json", "pretrain", a, "data1", export_dir="x")
    same = read_marker(tmp_path / "m.json", a, "data1")
    assert same.matches and same.payload == {"export_dir": "x"}
    assert read_marker(tmp_path / "m.json", b, "data1").changed == ["train.max_steps: 30 -> 400"]
    assert "data fingerprint: data1 -> data2" in read_marker(tmp_path / "m.json", a, "data2").changed
    assert read_marker(tmp_path / "m.json", a, "data2", check_data=False).matches
    assert read_marker(tmp_path / "none.json", a) is None


@pytest.fixture()
def tiny_demo(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo_cli, "QUICK", TINY)
    out, synth = tmp_path / "demo", tmp_path / "synth"

    def demo(*extra: str) -> tuple[int, str]:
        code = main(["demo", "--quick", "--out", str(out), "--synth", str(synth), "--methods", "convirt",
                     "--tasks", "zeroshot", "--no-baselines", "--jobs", "1", *extra])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return demo, out


def _results(out: Path) -> dict:
    return json.loads((out / "eval" / "zeroshot" / "convirt@seed0" / "results.json").read_text())


def test_a_changed_recipe_is_refused_then_fresh_retrains(tiny_demo):
    demo, out = tiny_demo
    code, _ = demo("--steps", "2")
    assert code in (0, 3)  # 3: "no method learned" (2 steps); the run itself finished
    done = json.loads((out / "pretrain" / "convirt@seed0" / "done.json").read_text())
    assert done["config"]["train"]["max_steps"] == 2
    assert _results(out)["model"]["config_fingerprint"] == done["config_fingerprint"]
    # the same recipe again: everything is reused
    code, text = demo("--steps", "2")
    assert code in (0, 3) and "pretrain [1/1]" in text and "resum" not in text
    # another number of steps into the same folder: refused, naming what changed and how to go on
    code, text = demo("--steps", "3")
    assert code == 1
    assert "train.max_steps: 2 -> 3" in text and "--fresh" in text and "--out" in text
    assert len([p for p in (out / "pretrain" / "convirt@seed0").iterdir() if p.is_dir()]) == 1  # nothing trained
    # --fresh: trained again with 3 steps, and the report names that recipe only
    code, text = demo("--steps", "3", "--fresh")
    assert code in (0, 3), text
    done = json.loads((out / "pretrain" / "convirt@seed0" / "done.json").read_text())
    assert done["config"]["train"]["max_steps"] == 3 and done["summary"]["steps"] == 3
    assert _results(out)["model"]["config_fingerprint"] == done["config_fingerprint"]
    report = (out / "report.md").read_text()
    assert "3 steps of batch" in report and "2 steps of batch" not in report and done["config_fingerprint"] in report
    # a changed task config is evaluated again (a derived result), the model is kept
    assert _results(out)["config"]["n_boot"] == TINY.n_boot
    code, text = demo("--steps", "3", "--eval-set", "zeroshot.n_boot=11")
    assert code in (0, 3) and _results(out)["config"]["n_boot"] == 11
    assert json.loads((out / "pretrain" / "convirt@seed0" / "done.json").read_text()) == done


def test_a_killed_run_is_resumed_from_its_last_checkpoint(tiny_demo):
    from reclf.config import save_config
    from reclf.demo.settings import demo_config

    demo, out = tiny_demo
    code, _ = demo("--steps", "2")
    assert code in (0, 3)
    label = out / "pretrain" / "convirt@seed0"
    (run,) = [p for p in label.iterdir() if p.is_dir()]
    # what a kill at step 2 of a 4-step recipe leaves: the run's config and its last.ckpt; no summary, no export,
    # no done marker (the 2-step run's checkpoint stands in for the 4-step run's step-2 checkpoint)
    for name in ("summary.json", "export", "checkpoints/best.ckpt"):
        path = run / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    (label / "done.json").unlink()
    four = replace(TINY, pretrain_steps=4)
    save_config(demo_config("convirt", 0, four, out.parent / "synth", out / "pretrain"), run / "config.yaml")
    empty = label / "20000101-000000"  # a run killed before its first checkpoint: nothing to resume
    empty.mkdir()
    (empty / "config.yaml").write_text((run / "config.yaml").read_text())

    code, text = demo("--steps", "4")
    assert code in (0, 3), text
    assert "resuming convirt@seed0 from step 2" in text and "(resumed from step 2)" in text
    assert not empty.exists()  # the half-run without a checkpoint is not left beside the resumed one
    assert [p for p in label.iterdir() if p.is_dir()] == [run]  # continued in place, not started over
    done = json.loads((label / "done.json").read_text())
    assert done["resumed_from_step"] == 2 and done["summary"]["steps"] == 4
    assert json.loads((out / "demo.json").read_text())["resumed"] == {"convirt@seed0": 2}
    assert "convirt@seed0 from step 2" in (out / "report.md").read_text()
