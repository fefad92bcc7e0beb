"""``pretrain(cfg) -> PretrainResult``: one function behind ``reclf pretrain``, the demo and the benchmarks.

Order of work, so that mistakes surface before anything slow happens: validate the config,
build the model (method keys are checked here), read and pre-scan the data, create the run
folder, then train. See docs/training.md for the run folder, resume and distributed behaviour.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reclf.config import BUILTIN_TEXT_ENCODERS, Config, ConfigError, save_config, to_dict, validate_values
from reclf.data.datasets import ON_ERROR, BadDataError, check_bad_fraction
from reclf.methods.interface import MethodModel, TrainableModel
from reclf.methods.params import resolve_method_section
from reclf.train.runs import (
    AtomicCheckpointIO,
    environment,
    find_resume_checkpoint,
    global_rank_from_env,
    load_checkpoint,
    new_run_dir,
    run_dir_of_checkpoint,
)
from reclf.utils.io import atomic_write_json
from reclf.utils.seed import seed_everything

DRY_RUN_PAIRS = 4
DRY_RUN_BATCH = 2


@dataclass
class PretrainResult:
    """What a training run produced (paths are ``None`` for a dry run or on non-zero ranks)."""

    run_dir: Path | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    export_dir: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# config checks and the dry-run substitutions


def validate_train_config(cfg: Config) -> None:
    """Value checks before any work starts: the ranges of ``reclf.config.validate_values`` (where they live, run
    already when the config is resolved; again here for a ``Config`` built in code) and ``data.on_error``."""
    validate_values(cfg)
    if cfg.data.on_error not in ON_ERROR:
        raise ConfigError(f"data.on_error={cfg.data.on_error!r}; allowed: {', '.join(ON_ERROR)}")


def _hf_available_offline(name: str) -> bool:
    if name in BUILTIN_TEXT_ENCODERS or Path(name).is_dir():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # no hub library, or an invalid repo name
        return False


def dry_run_config(cfg: Config) -> tuple[Config, list[str]]:
    """The config a dry run uses: tiny CPU inputs, random weights where files are not available offline."""
    cfg = copy.deepcopy(cfg)
    notes: list[str] = []
    te, ie = cfg.text_encoder, cfg.image_encoder
    if not _hf_available_offline(te.name):
        notes.append(
            f"text encoder {te.name!r} is not available offline: the dry run uses a RANDOM-INIT BERT of BERT-base "
            "size (768 hidden, 12 layers, 12 heads; bert-tiny's tokenizer) instead. A real run needs the weights."
        )
        te.name, te.hidden_size, te.num_layers, te.num_heads = "bert-tiny", 768, 12, 12
    if ie.weights is not None and not Path(ie.weights).is_file():
        notes.append(f"image weights {ie.weights!r} not found locally: the dry run uses random image weights")
        ie.weights = None
    te.max_tokens = min(te.max_tokens, 32)
    cfg.data.batch_size = DRY_RUN_BATCH
    cfg.data.num_workers = 0
    cfg.train.max_steps = 2
    cfg.train.max_epochs = 1
    cfg.train.accumulate = 1
    cfg.train.devices = 1
    cfg.train.num_nodes = 1
    cfg.train.accelerator = "cpu"
    cfg.train.strategy = "auto"
    cfg.train.compile = False
    if cfg.train.precision != "32-true":
        notes.append(f"precision {cfg.train.precision} -> 32-true for the CPU dry run")
        cfg.train.precision = "32-true"
    notes.append(f"inputs: {DRY_RUN_PAIRS} random image-report pairs at {ie.image_size} px (data.root is not read)")
    return cfg, notes


def resolve_precision(precision: str, accelerator: str) -> tuple[str, str | None]:
    """Use the requested autocast only where the device supports it; say so when falling back."""
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if precision.startswith("16") and not cuda:
        return "32-true", "16-mixed needs a GPU: training in 32-true on the CPU"
    if precision.startswith("bf16") and cuda and not torch.cuda.is_bf16_supported():
        return "16-mixed", "this GPU has no bf16: using 16-mixed"
    return precision, None


def build_model_from_config(cfg: Config) -> MethodModel:
    """The model of ``cfg`` (``reclf.methods.build_model``); method keys are checked here, before any data."""
    from reclf.methods import build_model

    return build_model(cfg)


# ---------------------------------------------------------------------------------------------
# the run


def _say(text: str, rank: int) -> None:
    if rank == 0:
        print(f"[reclf pretrain] {text}", flush=True)


@dataclass
class PretrainRun:
    """Everything :func:`build_trainer` prepared: the model, data, run folder, trainer and its callbacks."""

    cfg: Config  # after the dry-run substitutions
    notes: list[str]  # what a dry run changed
    rank: int
    module: Any  # PretrainModule (its .model is the method model)
    datamodule: Any  # PretrainDataModule, set up (the data was read and pre-scanned)
    trainer: Any  # lightning.Trainer
    checkpoints: Any  # CheckpointCallback: best / last paths, best score
    run_dir: Path
    resume_from: Path | None
    tmp: tempfile.TemporaryDirectory | None  # a dry run's throw-away folder

    @property
    def dry_run(self) -> bool:
        return bool(self.cfg.train.dry_run)


@dataclass
class TrainOutcome:
    """How :func:`run_training` ended: ``status`` is ``completed`` or ``failed: WHY`` (``error`` is then set)."""

    status: str
    error: BaseException | None
    elapsed_s: float


def pretrain(
    cfg: Config,
    model: TrainableModel | None = None,
    checkpoint_every_n_steps: int | None = None,
) -> PretrainResult:
    """Train ``cfg``'s method on ``cfg.data.root`` and export the best model.

    ``model``: an already built model (tests, notebooks); by default ``build_model(cfg)``.
    ``checkpoint_every_n_steps``: write ``last.ckpt`` every n optimiser steps (0: only after each
    validation); defaults to ``cfg.train.checkpoint_every_n_steps`` when the config has it.
    The three steps are :func:`build_trainer`, :func:`run_training` and :func:`finish_run`.
    """
    run = build_trainer(cfg, model, checkpoint_every_n_steps)
    try:
        outcome = run_training(run)
        return finish_run(run, outcome)
    finally:
        if run.tmp is not None:
            run.tmp.cleanup()


def build_trainer(
    cfg: Config, model: TrainableModel | None = None, checkpoint_every_n_steps: int | None = None
) -> PretrainRun:
    """Check the config, build the model, read the data, create the run folder and the Lightning trainer.

    In this order, so that a mistake surfaces before anything slow or anything written.
    """
    import lightning as L

    from reclf.train.callbacks import CheckpointCallback, MetricsCallback
    from reclf.train.datamodule import PretrainDataModule
    from reclf.train.module import PretrainModule

    validate_train_config(cfg)
    cfg = resolve_method_section(cfg)  # config.yaml records the preset's values, not only its name
    rank = global_rank_from_env()
    notes: list[str] = []
    if cfg.train.dry_run:
        cfg, notes = dry_run_config(cfg)
        for note in notes:
            _say(f"dry run: {note}", rank)
    if checkpoint_every_n_steps is None:
        checkpoint_every_n_steps = int(getattr(cfg.train, "checkpoint_every_n_steps", 0) or 0)

    seed_everything(cfg.seed)
    if model is None:
        model = build_model_from_config(cfg)  # validates the method keys before any data is read
    if cfg.train.compile:
        for name in ("image_encoder", "text_encoder"):
            sub = getattr(model, name, None)
            if isinstance(sub, nn.Module):
                sub.compile()  # in place: parameter names (and checkpoints) are unchanged

    datamodule = PretrainDataModule(cfg, model.tokenizer, synthetic=DRY_RUN_PAIRS if cfg.train.dry_run else 0)
    datamodule.setup("fit")  # reads + pre-scans the data now, so a bad data.root fails before training

    # ---- run folder
    ckpt_path: Path | None = None
    tmp: tempfile.TemporaryDirectory | None = None
    if cfg.train.dry_run:
        tmp = tempfile.TemporaryDirectory(prefix="reclf-dryrun-")
        run_dir = Path(tmp.name)
    elif cfg.train.resume:
        ckpt_path = find_resume_checkpoint(cfg.train.resume, cfg.train.runs_dir, cfg.name)
        run_dir = run_dir_of_checkpoint(ckpt_path)
        _say(f"resuming from {ckpt_path}", rank)
    else:
        run_dir = new_run_dir(cfg.train.runs_dir, cfg.name)
    ckpt_dir = run_dir / "checkpoints"
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / ("config.yaml" if not (run_dir / "config.yaml").exists() else "config.resumed.yaml"))
        atomic_write_json(run_dir / "env.json", environment())
    _say(f"run folder {run_dir}", rank)

    # ---- trainer
    precision, precision_note = resolve_precision(cfg.train.precision, cfg.train.accelerator)
    if precision_note:
        _say(precision_note, rank)
    module = PretrainModule(model, cfg.train, run_config=to_dict(cfg))
    ckpt_cb = CheckpointCallback(ckpt_dir, every_n_steps=0 if cfg.train.dry_run else checkpoint_every_n_steps)
    metrics_cb = MetricsCallback(run_dir / "metrics.csv", cfg.train.log_every_n_steps)
    callbacks: list[L.Callback] = [metrics_cb] if cfg.train.dry_run else [ckpt_cb, metrics_cb]
    logger: Any = False
    if not cfg.train.dry_run:
        try:
            import tensorboard  # noqa: F401
            from lightning.pytorch.loggers import TensorBoardLogger

            logger = TensorBoardLogger(str(run_dir), name="tensorboard", version="")
        except ImportError:  # tensorboard is optional: metrics.csv is always written
            pass
    on_gpu = cfg.train.accelerator in ("gpu", "cuda") or (cfg.train.accelerator == "auto" and torch.cuda.is_available())
    trainer = L.Trainer(
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        strategy=cfg.train.strategy,
        precision=precision,  # type: ignore[arg-type]  # a str checked by config.py against Lightning's Literal names
        max_epochs=cfg.train.max_epochs,
        max_steps=cfg.train.max_steps,
        gradient_clip_val=cfg.train.grad_clip or None,
        accumulate_grad_batches=cfg.train.accumulate,
        # CUDA has kernels without a deterministic version: warn there instead of failing
        deterministic=("warn" if on_gpu else True) if cfg.train.deterministic else False,
        callbacks=callbacks,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=cfg.train.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # EpochSampler splits the data over ranks itself
        check_val_every_n_epoch=cfg.train.val_every_n_epochs,
        log_every_n_steps=cfg.train.log_every_n_steps,
        limit_val_batches=1 if cfg.train.dry_run else 1.0,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )
    n_train = len(datamodule.train_set)  # type: ignore[arg-type]
    _say(
        f"{cfg.method.get('name')} | {n_train} training pairs | batch {cfg.data.batch_size} x {trainer.world_size} "
        f"rank(s) x accumulate {cfg.train.accumulate} | precision {precision}",
        rank,
    )
    return PretrainRun(cfg, notes, rank, module, datamodule, trainer, ckpt_cb, run_dir, ckpt_path, tmp)


def run_training(run: PretrainRun) -> TrainOutcome:
    """``trainer.fit``; a NaN loss or too many bad rows end the run as ``failed`` (raised after the summary)."""
    from reclf.train.module import NonFiniteLossError

    start = time.time()
    status = "completed"
    error: BaseException | None = None
    env_before = os.environ.get("RECLF_RUN_DIR")
    os.environ["RECLF_RUN_DIR"] = str(run.run_dir)  # DDP processes that Lightning starts inherit the folder
    with warnings.catch_warnings():
        # EpochSampler + PretrainModule restore the data position themselves (see docs/training.md)
        warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        try:
            run.trainer.fit(run.module, datamodule=run.datamodule,
                            ckpt_path=str(run.resume_from) if run.resume_from else None, weights_only=True)
        except (NonFiniteLossError, BadDataError) as exc:
            status, error = f"failed: {exc}", exc
        finally:
            if env_before is None:
                os.environ.pop("RECLF_RUN_DIR", None)
            else:
                os.environ["RECLF_RUN_DIR"] = env_before
    return TrainOutcome(status, error, time.time() - start)


def finish_run(run: PretrainRun, outcome: TrainOutcome) -> PretrainResult:
    """Check the bad rows, save the final checkpoint, export the best model, write ``summary.json``.

    Raises the run's error (after the summary is written) when it failed.
    """
    cfg, trainer, module, ckpt_cb, rank = run.cfg, run.trainer, run.module, run.checkpoints, run.rank
    status, error = outcome.status, outcome.error
    # ---- bad rows: pre-scan + load-time (this rank's count; ranks see disjoint data)
    scans = run.datamodule.bad_row_report()
    bad = {
        "pre_scan": scans,
        # files that exist but cannot be decoded, found while loading: failures summed over all
        # epochs, and the most in one epoch (= the number of such rows when an epoch sees every row)
        "load_failures_train_total": module.bad_rows_train,
        "unreadable_train_rows": module.bad_rows_train_epoch_max,
        "load_failures_valid_total": module.bad_rows_valid,
    }
    if error is None and "train" in scans:
        try:
            check_bad_fraction(
                scans["train"]["bad"] + module.bad_rows_train_epoch_max,
                scans["train"]["total"],
                cfg.data.max_bad_fraction,
                f"{cfg.data.root} (train split, after loading)",
            )
        except BadDataError as exc:
            status, error = f"failed: {exc}", exc

    last_ckpt = best_ckpt = export_dir = None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    if error is None and not run.dry_run:
        # the final state (resumable, and what `reclf export` reads)
        trainer.save_checkpoint(ckpt_cb.last_path, weights_only=False)
        last_ckpt = ckpt_cb.last_path
        best_ckpt = ckpt_cb.best_path if ckpt_cb.best_path.exists() else None
        if trainer.is_global_zero:
            from reclf.train.export import export_checkpoint

            export_dir = run.run_dir / "export"
            export_checkpoint(best_ckpt or last_ckpt, export_dir, model=module.model, overwrite=True)
            _say(f"exported {'best' if best_ckpt else 'final'} weights to {export_dir}", rank)
    elapsed = outcome.elapsed_s
    summary = {
        "status": status,
        "method": cfg.method.get("name"),
        "steps": int(trainer.global_step),
        "epochs_completed": int(trainer.current_epoch),
        "time_s": round(elapsed, 2),
        "pairs_per_s_overall": round(
            trainer.global_step * cfg.data.batch_size * cfg.train.accumulate * trainer.world_size / max(elapsed, 1e-9),
            2,
        ),
        "world_size": trainer.world_size,
        "resumed_from": str(run.resume_from) if run.resume_from else None,
        "bad_rows": bad,
        "best": {"metric": ckpt_cb.monitor, "value": ckpt_cb.best_score, "step": ckpt_cb.best_step},
        "final_metrics": metrics,
        "dry_run_notes": run.notes,
    }
    if rank == 0 and not run.dry_run:
        atomic_write_json(run.run_dir / "summary.json", summary)
    if error is not None:
        _say(status, rank)
        raise error
    where = "dry run, nothing kept" if run.dry_run else f"summary {run.run_dir / 'summary.json'}"
    _say(f"done: {summary['steps']} steps in {elapsed:.1f}s; {where}", rank)
    return PretrainResult(
        run_dir=None if run.dry_run else run.run_dir,
        best_checkpoint=best_ckpt,
        last_checkpoint=last_ckpt,
        export_dir=export_dir,
        metrics=metrics,
        summary=summary,
    )


__all__ = [
    "PretrainResult",
    "PretrainRun",
    "TrainOutcome",
    "build_trainer",
    "dry_run_config",
    "finish_run",
    "load_checkpoint",
    "pretrain",
    "run_training",
    "validate_train_config",
]
