"""A tiny pretrain run end to end: run folder, checkpoints, export, NaN stop, config errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from helpers.train_stub import StubModel, make_table, tiny_config
from reclf.config import ConfigError, load_config
from reclf.data.datasets import BadDataError
from reclf.methods.loading import model_state_dict
from reclf.train import pretrain
from reclf.train.export import export_checkpoint
from reclf.train.module import NonFiniteLossError
from reclf.train.runs import load_checkpoint
from reclf.train.schedule import WarmupCosine


def test_pretrain_writes_run_folder_checkpoints_and_export(tmp_path):
    make_table(tmp_path / "data", n_train=12, n_valid=4, missing=1, corrupt=1)
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs")
    cfg.data.max_bad_fraction = 0.3
    model = StubModel()
    result = pretrain(cfg, model=model)
    run = result.run_dir
    assert run is not None and run.parent == tmp_path / "runs" / "stubrun"
    for name in ("config.yaml", "env.json", "metrics.csv", "summary.json"):
        assert (run / name).is_file(), name
    assert result.last_checkpoint == run / "checkpoints" / "last.ckpt" and result.last_checkpoint.is_file()
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()
    assert (result.export_dir / "model.safetensors").is_file()
    assert model.epochs_started == [0, 1]

    summary = json.loads((run / "summary.json").read_text())
    # 12 train rows - 1 missing file (pre-scan) = 11 -> 2 batches of 4 per epoch, 2 epochs
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert summary["bad_rows"]["pre_scan"]["train"]["bad"] == 1
    # the corrupt PNG is found when loaded; whether it falls in the 8 rows drawn per epoch varies
    assert summary["bad_rows"]["unreadable_train_rows"] in (0, 1)
    assert 0.0 <= summary["final_metrics"]["val/acc1"] <= 1.0
    assert summary["best"]["value"] == pytest.approx(min_val_loss(run / "metrics.csv"), rel=1e-4)
    env = json.loads((run / "env.json").read_text())
    assert env["packages"]["torch"] and env["packages"]["lightning"]

    ckpt = load_checkpoint(result.last_checkpoint)  # weights_only=True
    assert ckpt["global_step"] == 4 and ckpt["reclf"]["config"]["name"] == "stubrun"
    state = model_state_dict(ckpt)
    assert set(state) == set(model.state_dict())
    out = export_checkpoint(result.last_checkpoint, tmp_path / "exp", model=StubModel())
    assert (out / "model.safetensors").is_file()
    with pytest.raises(FileExistsError):
        export_checkpoint(result.last_checkpoint, out, model=StubModel())


def min_val_loss(path):
    with open(path) as fh:
        rows = [r for r in csv.DictReader(fh) if r["metric"] == "val/loss"]
    assert rows, "no validation rows in metrics.csv"
    return min(float(r["value"]) for r in rows)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    make_table(tmp_path / "data", n_train=8, n_valid=4)
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs", max_epochs=3)
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 2.*last good checkpoint"):
        pretrain(cfg, model=StubModel(nan_after=2), checkpoint_every_n_steps=1)
    run = next((tmp_path / "runs" / "stubrun").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"].startswith("failed") and summary["steps"] == 2
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in model_state_dict(ckpt).values())


def test_too_many_bad_rows_fail_before_training(tmp_path):
    make_table(tmp_path / "data", n_train=8, n_valid=2, missing=3)
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs")
    with pytest.raises(BadDataError, match="3 of 8 studies are bad"):
        pretrain(cfg, model=StubModel())
    cfg.data.on_error = "raise"
    with pytest.raises(BadDataError, match="row 0"):
        pretrain(cfg, model=StubModel())
    assert not (tmp_path / "runs").exists()  # nothing is written before the data checks pass


def test_unknown_key_and_bad_values_are_errors_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key train.max_stepz"):
        load_config(None, ["method.name=reclf", "train.max_stepz=3"])
    cfg = tiny_config(tmp_path, tmp_path / "runs", precision="64-true")
    with pytest.raises(ConfigError, match="train.precision"):
        pretrain(cfg, model=StubModel())


def test_warmup_cosine_schedule():
    s = WarmupCosine(total_steps=10, warmup_steps=4)
    values = [s(i) for i in range(12)]
    assert values[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert values[4] == pytest.approx(1.0) and values[10] == pytest.approx(0.0) and values[11] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(values[4:], values[5:]))


def test_real_method_end_to_end_and_export_from_the_checkpoint_alone(tmp_path):
    """RECLF (cnn-small at 64 px + bert-tiny): train, then `reclf export` rebuilds the model from the checkpoint."""
    from reclf.methods import from_pretrained
    from reclf.train.export import add_arguments, run

    make_table(tmp_path / "data", n_train=8, n_valid=4, size=64)
    cfg = load_config(
        None,
        [
            "name=tiny_reclf",
            "method.name=reclf",
            "image_encoder.image_size=64",
            "text_encoder.max_tokens=32",
            f"data.root={tmp_path / 'data'}",
            "data.batch_size=4",
            f"train.runs_dir={tmp_path / 'runs'}",
            "train.max_epochs=1",
            "train.accelerator=cpu",
            "train.progress=false",
        ],
    )
    result = pretrain(cfg)
    assert result.summary["steps"] == 2 and set(result.summary["final_metrics"]) >= {"val/loss", "val/local"}
    assert from_pretrained(result.export_dir).method == "reclf"
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([str(result.last_checkpoint), "--out", str(tmp_path / "exported")])) == 0
    model = from_pretrained(tmp_path / "exported")
    final = model_state_dict(load_checkpoint(result.last_checkpoint))
    assert all(torch.equal(v, final[k]) for k, v in model.state_dict().items() if k in final)
