"""Run folders, environment capture, atomic checkpoints and the metrics log.

A run lives in ``<runs_dir>/<name>/<timestamp>/``::

    config.yaml        the resolved config (reclf.config.save_config)
    env.json           python / package versions, git commit, host, devices
    metrics.csv        step,epoch,metric,value (long format: one row per logged number)
    checkpoints/       last.ckpt (every n steps and after each validation), best.ckpt
    export/            model.save_pretrained of the best (else final) weights
    summary.json       steps, time, bad rows, best metric, final metrics, status

Checkpoints are written atomically (temporary file + rename) and only ever hold tensors and
plain Python values, so they are read back with ``torch.load(weights_only=True)`` — never a full
unpickle.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from reclf.methods.loading import load_checkpoint
from reclf.utils.io import atomic_path

PACKAGES = ("reclf", "torch", "lightning", "transformers", "tokenizers", "numpy", "pandas", "pillow", "safetensors")


def global_rank_from_env() -> int:
    """The process's global rank as launchers announce it (before torch.distributed starts)."""
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            try:
                return int(os.environ[key])
            except ValueError:
                pass
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")) or 0)
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return node * per_node + local


def new_run_dir(runs_dir: str | Path, name: str) -> Path:
    """``runs_dir/name/<timestamp>``; shared by every rank of a launch (``RECLF_RUN_DIR``).

    Rank 0 picks the folder and ``pretrain`` puts it in the environment while it trains, so the
    processes Lightning spawns for DDP inherit it; externally launched ranks (SLURM, torchrun)
    may set ``RECLF_RUN_DIR`` themselves.
    """
    if os.environ.get("RECLF_RUN_DIR"):
        return Path(os.environ["RECLF_RUN_DIR"])
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(runs_dir) / name
    path = base / stamp
    n = 1
    while path.exists():
        path = base / f"{stamp}-{n}"
        n += 1
    return path


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    """What is needed to reproduce a run: versions, commit, host and devices."""
    versions: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": platform.node(),
        "packages": versions,
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "cuda": torch.version.cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_threads": torch.get_num_threads(),
        "argv": sys.argv,
        "time": dt.datetime.now().isoformat(timespec="seconds"),
    }


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: atomic ``torch.save`` and ``weights_only=True`` loading."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: Any, map_location: Any | None = "cpu", weights_only: bool | None = None) -> dict:
        return load_checkpoint(path, map_location)


def find_resume_checkpoint(resume: str, runs_dir: str | Path, name: str) -> Path:
    """``train.resume``: a checkpoint file, a run folder, or ``auto`` (newest run of ``name``)."""
    if resume == "auto":
        base = Path(runs_dir) / name
        candidates = sorted(base.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise FileNotFoundError(
                f"train.resume=auto: no {base}/*/checkpoints/last.ckpt to resume from; start without train.resume"
            )
        return candidates[-1]
    path = Path(resume)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"train.resume={resume}: the folder has no checkpoints/last.ckpt")
    if not path.is_file():
        raise FileNotFoundError(f"train.resume={resume}: no such checkpoint file or run folder")
    return path


def run_dir_of_checkpoint(ckpt: Path) -> Path:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/x.ckpt`` -> ``<run>``)."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


class MetricsWriter:
    """Append-only ``metrics.csv`` (``step,epoch,metric,value``), safe to continue after a resume.

    A run killed after its last checkpoint has logged steps that the resumed run logs again; call
    :meth:`truncate_after` with the resumed step first so that each step appears once.
    """

    HEADER = ("step", "epoch", "metric", "value")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> int:
        """Drop the rows of steps after ``step`` (atomically); returns how many were dropped."""
        if not self.path.is_file():
            return 0
        with open(self.path, newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            return 0
        header, body = rows[0], rows[1:]
        keep = []
        for row in body:
            try:
                if int(row[0]) > step:
                    continue
            except (ValueError, IndexError):
                continue  # a line cut short by the kill
            keep.append(row)
        dropped = len(body) - len(keep)
        if dropped:
            with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(header)
                w.writerows(keep)
        return dropped

    def write(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        if not metrics:
            return
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(self.HEADER)
            for name, value in sorted(metrics.items()):
                w.writerow((step, epoch, name, f"{value:.6g}"))
