"""A full disk ends a command with one message naming the path and what to free, never a traceback.

The writers are made to fail the way a full disk makes them fail: the OS's ENOSPC, torch's zip writer
(``[enforce fail at inline_container.cc] unexpected pos``) and safetensors (``SafetensorError ... No space
left on device``)."""

from __future__ import annotations

import errno
import os

import pandas as pd
import pytest
import torch

from reclf import cli
from reclf.utils.io import (
    DiskFullError,
    atomic_dir,
    atomic_path,
    atomic_write_json,
    is_disk_full,
)

TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 1472 vs 1364"


class SafetensorError(Exception):
    """Stands for safetensors_rust.SafetensorError (not importable by name)."""


SAFETENSORS_FULL = SafetensorError(
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write() raises it: no file name


def test_every_library_form_of_a_full_disk_is_recognised():
    assert is_disk_full(enospc()) and is_disk_full(RuntimeError(TORCH_FULL)) and is_disk_full(SAFETENSORS_FULL)
    try:
        try:
            raise enospc()
        except OSError as inner:
            raise RuntimeError("Lightning wrapped it") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)  # found through the cause chain
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied")) and not is_disk_full(RuntimeError("bug"))


@pytest.mark.parametrize("fault", [enospc(), RuntimeError(TORCH_FULL), SAFETENSORS_FULL], ids=["os", "torch", "st"])
def test_atomic_writers_name_the_path_and_leave_nothing(tmp_path, monkeypatch, fault):
    def failing_save(obj, path):
        open(path, "wb").write(b"half")
        raise fault

    target = tmp_path / "run" / "last.ckpt"
    with pytest.raises(DiskFullError) as err, atomic_path(target) as tmp:
        failing_save({}, tmp)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert str(target) in str(err.value) and "free" in str(err.value)
    assert sorted(p.name for p in target.parent.iterdir()) == []  # no half file

    with pytest.raises(DiskFullError, match="model"), atomic_dir(tmp_path / "model") as tmp:
        failing_save({}, tmp / "model.safetensors")
    assert not (tmp_path / "model").exists() and not (tmp_path / ".model.partial").exists()

    def write_fails(*args, **kwargs):
        raise fault

    monkeypatch.setattr(os, "fsync", write_fails)
    with pytest.raises(DiskFullError, match="done.json"):
        atomic_write_json(tmp_path / "done.json", {"a": 1})
    assert not list(tmp_path.glob("*done.json*"))
    with pytest.raises(ValueError):  # anything else passes unchanged
        with atomic_path(tmp_path / "x"):
            raise ValueError("not a disk problem")


def _tiny_checkpoint(path):
    from reclf.config import Config, to_dict
    from reclf.methods import build_model

    cfg = Config(name="tiny", seed=0, method={"name": "convirt"})
    cfg.image_encoder.name, cfg.image_encoder.image_size = "cnn-small", 32
    cfg.text_encoder.name = "bert-tiny"
    model = build_model(cfg)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "reclf": {"config": to_dict(cfg)}}, path)


def test_export_on_a_full_disk_is_one_message(tmp_path, monkeypatch, capsys):
    import safetensors.torch

    ckpt = tmp_path / "last.ckpt"
    _tiny_checkpoint(ckpt)

    def save_file(*args, **kwargs):
        raise SAFETENSORS_FULL

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    monkeypatch.delenv("RECLF_TRACEBACK", raising=False)
    rc = cli.main(["export", str(ckpt), "--out", str(tmp_path / "exported")])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "reclf export: error: the disk is full" in err and str(tmp_path / "exported") in err and "free" in err
    assert not (tmp_path / "exported").exists()


def test_prepare_on_a_full_disk_is_one_message(tmp_path, monkeypatch, capsys):
    from helpers.image_files import gradient, write_png

    root = tmp_path / "data"
    root.mkdir()
    pd.DataFrame([(f"{i}.png", "Heart is enlarged.", f"p{i}", "train") for i in range(3)],
                 columns=["file", "text", "pid", "fold"]).to_csv(root / "pairs.csv", index=False)
    for i in range(3):
        write_png(root / f"{i}.png", gradient(20, 20))
    real = pd.DataFrame.to_csv

    def to_csv(self, path=None, *args, **kwargs):
        if path is not None and "studies" in str(path):
            raise enospc()
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    monkeypatch.delenv("RECLF_TRACEBACK", raising=False)
    rc = cli.main(["prepare", "pairs-csv", "--root", str(root), "--out", str(tmp_path / "out"), "--size", "16",
                   "--workers", "1", "--no-progress", "--image-column", "file", "--report-column", "text",
                   "--patient-column", "pid", "--split-column", "fold"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err, err
    assert "the disk is full" in err and "studies.csv" in err and "free" in err, err


def test_a_full_disk_outside_the_atomic_writers_names_the_output_folder(tmp_path, monkeypatch, capsys):
    """A write reclf does not wrap (a log line, an appended CSV) raises a bare ENOSPC: the message names --out."""
    from reclf.train import export

    def run(args):
        raise enospc()

    monkeypatch.setattr(export, "run", run)
    monkeypatch.delenv("RECLF_TRACEBACK", raising=False)
    rc = cli.main(["export", "x.ckpt", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and "the disk is full" in err and str(tmp_path / "o") in err


def test_a_pretraining_checkpoint_on_a_full_disk_names_the_checkpoint(tmp_path, monkeypatch):
    """Lightning saves through AtomicCheckpointIO; torch's zip writer failing midway becomes a DiskFullError."""
    from reclf.train.runs import AtomicCheckpointIO

    def save(obj, path):
        open(path, "wb").write(b"PK")
        raise RuntimeError(TORCH_FULL)

    monkeypatch.setattr(torch, "save", save)
    target = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(DiskFullError) as err:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, target)
    assert err.value.filename == str(target) and "inline_container" in str(err.value)
    assert list(target.parent.iterdir()) == []
