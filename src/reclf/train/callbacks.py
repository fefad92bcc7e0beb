"""Lightning callbacks: checkpoints (last + best, atomic) and the metrics log.

``CheckpointCallback`` writes ``last.ckpt`` every ``every_n_steps`` optimiser steps (when > 0)
and after every validation, and ``best.ckpt`` whenever the monitored validation metric improves.
It goes through ``trainer.save_checkpoint``, so only global rank 0 writes, through the atomic
checkpoint IO of ``reclf.train.runs``. Its own state (best score, paths) is part of the
checkpoint, so a resumed run keeps comparing against the true best.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch

from reclf.train.runs import MetricsWriter


class CheckpointCallback(L.Callback):
    def __init__(self, dirpath: str | Path, every_n_steps: int = 0, monitor: str = "val/loss", mode: str = "min"):
        if mode not in ("min", "max"):
            raise ValueError(f"checkpoint mode must be min or max, got {mode!r}")
        self.dirpath = Path(dirpath)
        self.every_n_steps = int(every_n_steps)
        self.monitor, self.mode = monitor, mode
        self.best_score: float | None = None
        self.best_step: int | None = None
        self._last_saved_step = -1

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    @property
    def best_path(self) -> Path:
        return self.dirpath / "best.ckpt"

    def _save_last(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.last_path, weights_only=False)  # False: the full resumable state
        self._last_saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0 and step != self._last_saved_step:
            self._save_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None:
            score = float(value)
            better = self.best_score is None or (
                score < self.best_score if self.mode == "min" else score > self.best_score
            )
            if math.isfinite(score) and better:
                self.best_score, self.best_step = score, trainer.global_step
                trainer.save_checkpoint(self.best_path, weights_only=False)
        self._save_last(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_step": self.best_step, "monitor": self.monitor}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_step = state_dict.get("best_step")


class MetricsCallback(L.Callback):
    """Writes logged numbers to ``metrics.csv`` on global rank 0 (training every n steps, validation each time)."""

    def __init__(self, path: str | Path, every_n_steps: int = 10) -> None:
        self.writer = MetricsWriter(path)
        self.every_n_steps = max(int(every_n_steps), 1)
        self.final: dict[str, float] = {}
        self._last_step = -1

    @staticmethod
    def _numbers(metrics: dict[str, Any], prefix: tuple[str, ...]) -> dict[str, float]:
        out = {}
        for k, v in metrics.items():
            if k.startswith(prefix):
                out[k] = float(v.detach().float()) if isinstance(v, torch.Tensor) else float(v)
        return out

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A resumed run starts at its checkpoint's step: rows the killed run logged after it are logged again.
        if trainer.is_global_zero and trainer.global_step > 0:
            self.writer.truncate_after(trainer.global_step)
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step % self.every_n_steps != 0 or trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        numbers = self._numbers(trainer.callback_metrics, ("train/", "pairs_per_s"))
        if numbers and trainer.is_global_zero:
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
            if lr is not None:
                numbers["train/lr"] = float(lr)
            self.writer.write(trainer.global_step, trainer.current_epoch, numbers)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        numbers = self._numbers(trainer.callback_metrics, ("val/",))
        self.final.update(numbers)
        if numbers and trainer.is_global_zero:
            self.writer.write(trainer.global_step, trainer.current_epoch, numbers)
