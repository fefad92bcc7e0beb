"""The LightningModule that trains any registered method.

It knows nothing about a method's losses: a training step is ``model.loss(batch, gather)``,
where ``gather`` all-gathers embeddings with gradients across DDP ranks (see
``reclf.train.distributed``). Validation reports the method's loss terms and in-batch retrieval
accuracy@1 in both directions (image->report, report->image) using ``model.similarity``.

The module also owns what makes a resume exact: the RNG states (torch, numpy, python) and the
position inside the epoch are stored in every checkpoint and restored before training resumes.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.types import LRSchedulerConfigType, OptimizerLRSchedulerConfig
from torch import nn

from reclf.config import TrainConfig, check_optimizer
from reclf.methods.interface import TrainableModel, missing_members
from reclf.train.distributed import all_gather_with_grad, world_size
from reclf.train.schedule import WarmupCosine, warmup_steps

MODEL_KEYS = ("images", "tokens", "reports")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


class GatherFn:
    """``gather`` for ``model.loss``: all-gather with autograd across the DDP ranks."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return all_gather_with_grad(x)


def rng_states() -> dict[str, Any]:
    """All global RNG states, as tensors and plain values (loadable with weights_only=True)."""
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # legacy=True: (kind, keys, pos, has_gauss, cached_gaussian)
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"].cpu())
    n = states["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def retrieval_accuracy(similarity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In-batch accuracy@1 of ``similarity[i, t]`` (pairs on the diagonal): (image->report, report->image)."""
    target = torch.arange(similarity.shape[0], device=similarity.device)
    i2t = (similarity.argmax(dim=1) == target).float().mean()
    t2i = (similarity.argmax(dim=0) == target).float().mean()
    return i2t, t2i


def check_trainable(model: Any) -> TrainableModel:
    """``model`` if it is an ``nn.Module`` with the training interface (``reclf.methods.interface``); a
    ``TypeError`` naming what is missing otherwise (before Lightning fails deep inside a step)."""
    names = missing_members(model, TrainableModel)
    if not isinstance(model, nn.Module) or names:
        what = "is not a torch.nn.Module" if not isinstance(model, nn.Module) else f"lacks {', '.join(names)}"
        raise TypeError(
            f"{type(model).__name__} {what}: training needs a model with the TrainableModel interface "
            "(reclf.methods.interface; every reclf.create_model(...) has it)"
        )
    assert isinstance(model, TrainableModel)  # every name it declares is there (missing_members)
    return model


class PretrainModule(L.LightningModule):
    """Wraps a method model (``VLModel``) for Lightning: steps, validation, optimiser, resume state."""

    def __init__(
        self, model: TrainableModel, train_cfg: TrainConfig, run_config: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.model: TrainableModel = check_trainable(model)
        self.train_cfg = train_cfg
        self.run_config = run_config or {}
        self.batches_in_epoch = 0
        self.bad_rows_train = 0  # rows dropped by the collate at load time (this rank)
        self.bad_rows_valid = 0
        self.bad_rows_train_epoch = 0  # this epoch, this rank
        self.bad_rows_train_epoch_max = 0  # the most in one epoch, summed over ranks
        self._pending_rng: dict[str, Any] | None = None
        self._t_last: float | None = None
        self.last_train_terms: dict[str, float] = {}

    # ------------------------------------------------------------------ helpers
    def _model_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: batch[k] for k in MODEL_KEYS if k in batch}

    def _loss(self, batch: dict[str, Any], train: bool) -> dict[str, torch.Tensor]:
        """``model.loss`` with the cross-rank gather in training (global negatives from every rank).

        ``train.gather_local`` also gathers words and regions for the local (word-region) loss;
        by default each rank scores local matchings within its own batch only (docs/training.md).
        """
        if not train or world_size() == 1:
            return self.model.loss(self._model_batch(batch), gather=None)
        extra = {"gather_local": True} if self.train_cfg.gather_local else {}
        return self.model.loss(self._model_batch(batch), gather=GatherFn(), **extra)

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        self.batches_in_epoch = 0
        self.bad_rows_train_epoch = 0
        self.model.on_train_epoch_start(self.current_epoch)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._pending_rng is not None:  # restore exactly where the interrupted run was
            set_rng_states(self._pending_rng)
            self._pending_rng = None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        self.batches_in_epoch += 1
        self.bad_rows_train += int(batch.get("n_bad", 0))
        self.bad_rows_train_epoch += int(batch.get("n_bad", 0))
        if batch.get("images") is None:  # every row of this batch was unreadable
            return None
        terms = self._loss(batch, train=True)
        loss = terms["loss"]
        finite = bool(torch.isfinite(loss.detach()).all())
        if world_size() > 1:
            finite = bool(self.trainer.strategy.reduce_boolean_decision(finite, all=True))
        if not finite:
            raise NonFiniteLossError(
                f"the training loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}, studies {batch.get('study_ids', [])[:4]}...). The run stops here; the last "
                "good checkpoint is kept in the run's checkpoints/ folder. Try a lower train.lr, "
                "train.precision=32-true or a smaller train.grad_clip"
            )
        bsz = batch["images"].shape[0]
        for name, value in terms.items():
            self.log(
                f"train/{name}",
                value.detach().float(),
                on_step=True,
                on_epoch=False,
                batch_size=bsz,
                prog_bar=name == "loss",
            )
        self.last_train_terms = {k: float(v.detach()) for k, v in terms.items()}
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._t_last is not None and batch.get("images") is not None:
            pairs = batch["images"].shape[0] * world_size()
            self.log(
                "pairs_per_s",
                pairs / max(now - self._t_last, 1e-9),
                on_step=True,
                prog_bar=True,
                batch_size=batch["images"].shape[0],
                rank_zero_only=True,
            )
        self._t_last = now

    def on_train_epoch_end(self) -> None:
        n = torch.tensor(float(self.bad_rows_train_epoch), device=self.device)
        if world_size() > 1:
            n = self.trainer.strategy.reduce(n, reduce_op="sum")
        self.bad_rows_train_epoch_max = max(self.bad_rows_train_epoch_max, int(n.item()))

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.bad_rows_valid += int(batch.get("n_bad", 0))
        if batch.get("images") is None:
            return
        bsz = batch["images"].shape[0]
        terms = self._loss(batch, train=False)
        for name, value in terms.items():
            self.log(f"val/{name}", value.float(), on_epoch=True, batch_size=bsz, sync_dist=True)
        text = batch["tokens"] if "tokens" in batch else batch["reports"]
        sim = self.model.similarity(self.model.encode_image(batch["images"]), self.model.encode_text(text))
        i2t, t2i = retrieval_accuracy(sim)
        self.log("val/i2t_acc1", i2t, on_epoch=True, batch_size=bsz, sync_dist=True)
        self.log("val/t2i_acc1", t2i, on_epoch=True, batch_size=bsz, sync_dist=True)
        self.log("val/acc1", (i2t + t2i) / 2, on_epoch=True, batch_size=bsz, sync_dist=True, prog_bar=True)

    def on_validation_epoch_start(self) -> None:
        self._t_last = None

    # ------------------------------------------------------------------ optimiser
    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: one learning rate per part (text encoder, image encoder, heads), and no weight
        decay on biases, norms, temperatures and other scalars/vectors. Frozen parameters are left out."""
        cfg = self.train_cfg
        lrs = {"text": cfg.lr_text, "image": cfg.lr_image, "heads": None}
        groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
        model = self.model
        assert isinstance(model, nn.Module)  # check_trainable
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            part = (
                "text"
                if name.startswith("text_encoder.")
                else "image"
                if name.startswith("image_encoder.")
                else "heads"
            )
            decay = not (p.ndim <= 1 or name.endswith(".bias"))
            groups.setdefault((part, decay), []).append(p)
        return [
            {
                "params": params,
                "lr": cfg.lr if lrs[part] is None else lrs[part],
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "name": f"{part}{'' if decay else '/no_decay'}",
            }
            for (part, decay), params in groups.items()
        ]

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        cfg = self.train_cfg
        check_optimizer(cfg)  # done when the config was resolved; again for a TrainConfig built in code
        optimizer = torch.optim.AdamW(self.param_groups(), lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]))
        if cfg.scheduler == "plateau":  # GLoRIA: halve the lr when val/loss has not improved for 5 epochs
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
            )
            # strict=False: a run without a validation split keeps its lr (Lightning warns) instead of failing
            sched: LRSchedulerConfigType = {
                "scheduler": plateau, "monitor": "val/loss", "interval": "epoch", "frequency": 1, "strict": False}
            return {"optimizer": optimizer, "lr_scheduler": sched}
        total = self.trainer.estimated_stepping_batches
        total = int(total) if math.isfinite(total) and total > 0 else max(cfg.max_steps, 1)
        schedule = WarmupCosine(total, warmup_steps(total, cfg.warmup_fraction))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------ checkpoint state
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["reclf"] = {
            "config": self.run_config,
            "model_config": self.model.config,
            "method": self.model.method,
            "epoch": int(self.current_epoch),
            "batches_in_epoch": int(self.batches_in_epoch),
            "bad_rows_train": int(self.bad_rows_train),
            "bad_rows_train_epoch": int(self.bad_rows_train_epoch),
            "bad_rows_train_epoch_max": int(self.bad_rows_train_epoch_max),
            "rng": rng_states(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("reclf", {})
        self.batches_in_epoch = int(state.get("batches_in_epoch", 0))
        self.bad_rows_train = int(state.get("bad_rows_train", 0))
        self.bad_rows_train_epoch = int(state.get("bad_rows_train_epoch", 0))
        self.bad_rows_train_epoch_max = int(state.get("bad_rows_train_epoch_max", 0))
        self._pending_rng = state.get("rng")
        trainer = getattr(self, "_trainer", None)
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        if dm is not None and hasattr(dm, "resume_from"):
            dm.resume_from(int(state.get("epoch", 0)), self.batches_in_epoch)
