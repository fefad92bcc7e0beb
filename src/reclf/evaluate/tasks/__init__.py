"""The evaluation protocols, one module each, and **the task registry** (docs/evaluation.md states every protocol).

``TASKS`` maps a task name to its :class:`TaskSpec`: the module, its ``*Config`` dataclass, its runner
``run_<task>(loaded_model, data_folder, out_folder, config) -> TaskResult`` (writes ``results.json``),
the data it needs, the SynthCXR set the demo gives it, and the metrics a report charts. Everything
that lists tasks reads it: ``reclf evaluate`` (one sub-command per entry), the demo (its tasks and
their data), ``reclf report`` (the order and the charted metrics), the docs' task table. Adding a task
is one entry here (and its module).

A task's config is resolved as the training config is (``reclf.config``): the dataclass defaults, then
the values given (``--options`` of ``reclf evaluate``, the demo's sizes), then ``key=value`` overrides;
an unknown key is a :class:`~reclf.config.ConfigError` naming it and the nearest valid key, and the
ranges (:func:`check_task_config`) are checked before any model is loaded or data read. The task
modules import torch: the registry imports a module only when its config or runner is asked for, so
``reclf --help`` stays instant.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from reclf.config import ConfigError, coerce_fields, overrides_to_dict, unknown_key_error


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task: where its code is, what it needs, how a report shows it."""

    name: str
    module: str  # the task's module (imported on first use)
    config_name: str  # its config dataclass, in ``module``
    runner_name: str  # ``run_<task>(loaded, data, out, cfg) -> TaskResult``, in ``module``
    description: str  # one line: what it measures (the ``reclf evaluate TASK`` help)
    data: str  # one line: the study table it needs (the ``--data`` help)
    synth_set: str  # the SynthCXR folder the demo evaluates it on (``reclf synth`` writes it)
    needs_text: bool = True  # False: image-only (a supervised ceiling, which has no text side, runs it too)
    headline: tuple[str, ...] = ()  # metrics ``reclf report`` charts (the first present ones)
    # allowed values of str fields (checked with the ranges, before any work)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    builder: str | None = None  # a function of ``module`` building the config from the given values (presets)

    def _attr(self, name: str) -> Any:
        return getattr(importlib.import_module(self.module), name)

    @property
    def config_class(self) -> type:
        return self._attr(self.config_name)

    @property
    def runner(self) -> Callable[..., Any]:
        return self._attr(self.runner_name)

    def field_names(self) -> list[str]:
        return [f.name for f in fields(self.config_class)]

    def make_config(self, values: Mapping[str, Any] | None = None, overrides: Sequence[str] = (),
                    prefix: str = "") -> Any:
        """The task's config: defaults <- ``values`` <- ``key=value`` ``overrides``, type- and range-checked.

        ``prefix`` is put before the keys in error messages (the demo's ``zeroshot.n_boot``).
        """
        data = dict(values or {})
        try:
            overrides_to_dict(overrides, data)
        except ConfigError as exc:
            raise ConfigError(f"reclf evaluate {self.name}: {exc}") from None
        nested = [k for k, v in data.items() if isinstance(v, dict)]
        if nested:  # "a.b=1": a task config has no sections
            raise unknown_key_error(f"{nested[0]}.{next(iter(data[nested[0]]))}", self.field_names(), prefix)
        checked = coerce_fields(self.config_class, data, prefix)
        cfg = self._attr(self.builder)(**checked) if self.builder else self.config_class(**checked)
        check_task_config(cfg, self.choices, prefix)
        return cfg

    def run(self, loaded: Any, data: str | Path, out: Path | None, cfg: Any) -> Any:
        """Run the task on ``loaded`` (a ``LoadedModel``) and ``data``; writes ``out/results.json``."""
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"task {self.name}: expected a {self.config_name}, got {type(cfg).__name__}")
        return self.runner(loaded, data, out, cfg)


_SYNTH = "SynthCXR"
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "zeroshot", "reclf.evaluate.tasks.zeroshot", "ZeroShotConfig", "run_zeroshot",
            "zero-shot classification with prompt files",
            "a table with a class column (or label columns) and images", "zeroshot_5x200",
            headline=("method/accuracy", "global/accuracy", "fused/accuracy"),
            choices={"reduce": ("mean", "max")},
        ),
        TaskSpec(
            "linear", "reclf.evaluate.tasks.linear", "LinearConfig", "run_linear",
            "linear probe on the frozen global feature", "a table with label columns (or a class column)",
            "classification", needs_text=False,
            headline=("1%/auroc", "10%/auroc", "100%/auroc", "1%/accuracy", "10%/accuracy", "100%/accuracy"),
            choices={"target": ("auto", "labels", "class"), "label_set": ("auto", "competition", "all"),
                     "uncertain": ("ignore", "ones", "zeros", "gloria"), "recipe": ("cached", "mgca")},
        ),
        TaskSpec(
            "segment", "reclf.evaluate.tasks.segment", "SegmentConfig", "run_segment_tasks",
            "U-Net segmentation on the encoder's feature pyramid", "a table with mask_path (and patient_id)",
            "segmentation", needs_text=False,
            headline=("100%/dice", "pneumothorax/100%/dice", "opacity/100%/dice", "10%/dice"),
            choices={"loss": ("bce_dice", "focal_dice"), "monitor": ("dice", "loss")},
            builder="segment_config",
        ),
        TaskSpec(
            "retrieve", "reclf.evaluate.tasks.retrieve", "RetrieveConfig", "run_retrieve",
            "image<->report retrieval (Recall@K, Precision@K)", "a table of images with their reports",
            "retrieval_8x200",
            headline=("method/i2t/R@5", "method/t2i/R@5", "global/i2t/R@5", "global/t2i/R@5", "method/i2t/P@10"),
        ),
        TaskSpec(
            "relations", "reclf.evaluate.tasks.relations", "RelationsConfig", "run_relations",
            "true caption vs side/zone/severity/negation and binding (swap) foils",
            f"a table with candidates.csv ({_SYNTH} relations, or a relations set)", "relations",
            headline=("side", "zone", "severity", "negation", "swap_side", "swap_zone", "all_foils_single",
                      "all_foils_binding", "all_foils"),
            choices={"score": ("method", "global", "local")},
        ),
        TaskSpec(
            "grounding", "reclf.evaluate.tasks.grounding", "GroundingConfig", "run_grounding",
            "word-region attention vs the true masks (pointing game, IoU)",
            "a table with finding masks and annotations", "relations",
            headline=("pointing_game", "attention_iou"),
        ),
        TaskSpec(
            "phrase-grounding", "reclf.evaluate.tasks.phrase_grounding", "PhraseGroundingConfig",
            "run_phrase_grounding",
            "phrase similarity maps vs boxes: BioViL's CNR, mIoU over thresholds, pointing game",
            f"a table with phrases and boxes (MS-CXR: reclf prepare ms-cxr; {_SYNTH} relations)", "relations",
            headline=("cnr", "miou", "pointing_game"),
            choices={"map": ("similarity", "attention"), "region": ("box", "mask")},
        ),
        TaskSpec(
            "diagnostics", "reclf.evaluate.tasks.diagnostics", "DiagnosticsConfig", "run_diagnostics",
            "word importance, SRM relations and grounding by word role", f"{_SYNTH} (word roles)", "relations",
        ),
    )
}


def task_spec(name: str) -> TaskSpec:
    """The registered task ``name``; an unknown name is an error naming the nearest registered one."""
    if name not in TASKS:
        import difflib

        near = difflib.get_close_matches(name, list(TASKS), n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"unknown task {name!r}{hint}; registered tasks: {', '.join(TASKS)}")
    return TASKS[name]


#: field name -> its lowest allowed value, for every task config that has the field
_AT_LEAST: dict[str, float] = {
    "n_boot": 1, "batch_size": 1, "chunk": 1, "epochs": 1, "max_steps": 1, "min_steps": 0, "shuffles": 1,
    "eval_every": 1, "patience": 0, "rerank_k": 0, "prompts_per_class": 1, "max_images": 1, "max_reports": 1,
    "image_size": 8, "width": 1, "mgca_batch_size": 1, "mgca_patience": 0, "seed": 0,
}
_POSITIVE = ("lr", "encoder_lr", "mgca_lr", "temperature")
_UNIT = ("threshold",)  # in [0, 1]


def check_task_config(cfg: Any, choices: Mapping[str, tuple[str, ...]] | None = None, prefix: str = "") -> None:
    """Range checks of a task config, by field name (the same rule for every task that has the field).

    Run by :meth:`TaskSpec.make_config`, i.e. before any model is loaded or data read: a label fraction of
    0 or a ``n_boot`` of 0 would otherwise fail minutes later, far from the key.
    """
    names = {f.name for f in fields(cfg)}

    def bad(key: str, value: Any, rule: str) -> None:
        raise ConfigError(f"{prefix}{key}={value!r}: {rule}")

    for key, lo in _AT_LEAST.items():
        value = getattr(cfg, key, None) if key in names else None
        if isinstance(value, int | float) and not isinstance(value, bool) and value < lo:
            bad(key, value, f"must be >= {lo:g}")
    for key in _POSITIVE:
        value = getattr(cfg, key, None) if key in names else None
        if isinstance(value, int | float) and not (math.isfinite(value) and value > 0):
            bad(key, value, "must be a finite number > 0")
    for key in _UNIT:
        value = getattr(cfg, key, None) if key in names else None
        if isinstance(value, int | float) and not 0.0 <= value <= 1.0:
            bad(key, value, "must be in [0, 1]")
    if "fractions" in names:
        fractions = list(cfg.fractions or [])
        if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
            bad("fractions", fractions, "label fractions must be in (0, 1], e.g. [0.01, 0.1, 1.0]")
    if "seeds" in names and not list(cfg.seeds or []):
        bad("seeds", cfg.seeds, "give at least one seed, e.g. [0]")
    for key, allowed in dict(choices or {}).items():
        value = getattr(cfg, key, None)
        if value is not None and value not in allowed:
            bad(key, value, f"must be one of {', '.join(allowed)}")


__all__ = ["TASKS", "TaskSpec", "check_task_config", "task_spec"]
