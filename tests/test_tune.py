"""``reclf tune``: the grid, the choice by a validation criterion, failed trials, resuming, the written table."""

from __future__ import annotations

import json

import pytest

from reclf.data.synthetic.generate import generate
from reclf.tune import Trial, Tuning, best_logged, grid_points, lower_is_better, parse_grid, point_name, tune


def test_grid_is_the_product_in_the_given_order():
    grid = parse_grid(["train.lr=3e-4,1e-3", "method.d_z=32,64"])
    assert grid == {"train.lr": ["3e-4", "1e-3"], "method.d_z": ["32", "64"]}
    points = grid_points(grid)
    assert points[0] == {"train.lr": "3e-4", "method.d_z": "32"} and len(points) == 4
    assert point_name(points[-1]) == "lr=1e-3,d_z=64"
    for bad in (["train.lr"], ["=1,2"], ["train.lr="], ["train.lr=1", "train.lr=2"], []):
        with pytest.raises(ValueError, match="grid"):
            parse_grid(bad)


def _trial(preset: str, lr: str, loss: float | None, status: str = "completed") -> Trial:
    return Trial(preset, {"train.lr": lr}, status, loss, 10, 12, 1.0)


def test_the_lowest_validation_loss_is_chosen_per_preset_and_failures_never():
    tuning = Tuning({"train.lr": ["1", "2", "3"]}, [], 0, [
        _trial("a", "1", 2.0), _trial("a", "2", 1.5), _trial("a", "3", float("nan")),
        _trial("b", "1", None, "failed: NonFiniteLossError"), _trial("b", "2", 3.0), _trial("b", "3", 3.0),
        _trial("c", "1", 0.1, "failed: BadDataError"),
    ], criterion="val/loss")
    chosen = tuning.chosen()
    assert chosen["a"].point == {"train.lr": "2"}
    assert chosen["b"].point == {"train.lr": "2"}  # a tie keeps the earlier grid point
    assert chosen["c"] is None  # a failed trial is never chosen, however low its number


def _run_with(tmp_path, name: str, rows: list[tuple[int, str, float]]) -> str:
    folder = tmp_path / name
    folder.mkdir()
    lines = ["step,epoch,metric,value"] + [f"{step},0,{metric},{value}" for step, metric, value in rows]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    return str(folder)


def test_the_criterion_reads_each_runs_validations_and_maximises_accuracies(tmp_path):
    # MGCA's case: the lowest total loss is not the best retrieval; the criterion picks by val/acc1
    a1 = _run_with(tmp_path, "a1", [(10, "val/loss", 12.1), (10, "val/acc1", 0.05), (20, "val/acc1", 0.07)])
    a2 = _run_with(tmp_path, "a2", [(10, "val/loss", 12.4), (10, "val/acc1", 0.30), (20, "val/acc1", float("nan"))])
    a3 = _run_with(tmp_path, "a3", [(10, "val/loss", 12.9)])  # never logged the criterion: not usable
    trials = [_trial("a", "1", 12.1), _trial("a", "2", 12.4), _trial("a", "3", 12.9)]
    for t, run in zip(trials, (a1, a2, a3)):
        t.run_dir = run
    assert best_logged(a1, "val/acc1") == (0.07, 20) and best_logged(a2, "val/acc1") == (0.30, 10)
    assert best_logged(a3, "val/acc1") == (None, None) and best_logged(None, "val/acc1") == (None, None)
    assert Tuning({"train.lr": ["1", "2", "3"]}, [], 0, trials).chosen()["a"] is trials[1]
    assert Tuning({"train.lr": ["1", "2", "3"]}, [], 0, trials, criterion="val/loss").chosen()["a"] is trials[0]
    assert lower_is_better("val/loss") and lower_is_better("val/global") and not lower_is_better("val/acc1")


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    generate(root / "synth", n=100, size=64, per_class=10, seed=0, sets=("pretrain",))
    return root / "synth" / "pretrain"


def test_tune_trains_every_point_writes_the_table_and_resumes(tiny_corpus, tmp_path):
    common = [f"data.root={tiny_corpus}", "data.batch_size=8", "train.max_steps=12", "train.log_every_n_steps=1"]
    out = tmp_path / "tune"
    tuning = tune(["demo_convirt"], parse_grid(["train.lr=1e-3,1e-2"]), common, out)
    assert [t.point["train.lr"] for t in tuning.trials] == ["1e-3", "1e-2"]
    assert all(t.usable and t.steps == 12 for t in tuning.trials), [t.status for t in tuning.trials]
    best = max(tuning.trials, key=lambda t: best_logged(t.run_dir, "val/acc1")[0])
    assert tuning.chosen()["demo_convirt"] is best and tuning.criterion == "val/acc1"
    saved = json.loads((out / "tuning.json").read_text())
    assert saved["chosen"] == {"demo_convirt": best.point} and len(saved["trials"]) == 2
    table = (out / "tuning.md").read_text()
    assert "**chosen**" in table and "best val/acc1" in table and "best val/loss" in table
    assert (out / "cache").is_dir()  # the frozen MiniLM ran once for every trial
    # every run used the grid point's value (the point wins over the preset) and the shared seed
    for t in tuning.trials:
        config = next((tmp_path / "tune" / "demo_convirt" / point_name(t.point)).glob("*/config.yaml")).read_text()
        assert f"lr: {float(t.point['train.lr'])}" in config and "seed: 0" in config
    # a second call reads the trial markers instead of training again
    again = tune(["demo_convirt"], parse_grid(["train.lr=1e-3,1e-2"]), common, out)
    assert [t.run_dir for t in again.trials] == [t.run_dir for t in tuning.trials]
    assert [t.seconds for t in again.trials] == [t.seconds for t in tuning.trials]
    # a finished trial of another config (a changed --set) is refused before anything trains, never reused
    with pytest.raises(ValueError, match="ran with another config"):
        tune(["demo_convirt"], parse_grid(["train.lr=1e-3,1e-2"]), [*common[:-1], "train.max_steps=13"], out)
