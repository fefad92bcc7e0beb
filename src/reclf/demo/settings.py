"""The demo's recipe: which methods and tasks, how big the data and the evaluation sets, how long to train.

The pretraining recipe itself (method, encoders, optimiser) is the shipped preset ``demo_<method>``;
``demo_config`` adds only the demo's budget, folders and seed. ``QUICK`` and ``FULL`` are the two sizes
(measured: docs/evaluation.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reclf.evaluate.tasks import TASKS as TASK_REGISTRY
from reclf.evaluate.tasks import task_spec

#: Demo runs by label: a registered method, or ``<method>+<trick>`` — a baseline given a training trick that
#: RECLF uses and any method could (``gloria+bind``: binding-aware negatives), so that a gain is credited to
#: RECLF's modules only when they earn it. Each label has its shipped preset ``demo_<label>``.
METHODS = ("convirt", "gloria", "gloria+bind", "mgca", "reclf", "reclf-no-srm", "reclf-no-irm")
#: every registered evaluation task (``reclf.evaluate.tasks.TASKS``), in the registry's order
TASKS = tuple(TASK_REGISTRY)


@dataclass
class DemoSettings:
    """Sizes of one demo; ``QUICK`` and ``FULL`` below are the two presets (measured: docs/evaluation.md).

    The pretraining recipe (method, encoders, optimiser) is the shipped preset's; these are the
    budget and the sizes of the data and of the evaluation sets.
    """

    synth_n: int  # pretraining studies (80 / 10 / 10 % by patient)
    synth_per_class: int  # images per class of the zero-shot, retrieval, segmentation and relations sets
    classification_n: int  # studies of the classification set (linear probe, supervised ceiling)
    image_size: int
    pretrain_steps: int
    pretrain_batch: int
    seeds: int
    linear_fractions: list[float]
    linear_seeds: list[int]
    segment_fractions: list[float]
    segment_seeds: list[int]
    segment_epochs: int
    segment_min_steps: int
    segment_task: str | None
    supervised_epochs: int
    prompts_per_class: int
    n_boot: int
    methods: tuple[str, ...] = METHODS  # pretrained unless --methods says otherwise
    method_overrides: dict[str, Any] = field(default_factory=dict)
    synth_seed: int = 0  # SynthCXR's seed: 0 for the reported numbers, another for design choices
    overrides: list[str] = field(default_factory=list)  # `key=value` applied to every pretraining run (--set)
    eval_overrides: list[str] = field(default_factory=list)  # `TASK.key=value` of a task's config (--eval-set)


QUICK = DemoSettings(
    synth_n=1500,
    synth_per_class=60,
    classification_n=1200,
    image_size=64,
    # the full demo's budget: every method's rates were tuned for 500 steps (at 250, ConVIRT's loss had not
    # yet left chance level: last/first 0.90, "did not learn"); the quick demo saves on data and evaluation
    pretrain_steps=500,
    pretrain_batch=32,
    seeds=1,
    linear_fractions=[0.1, 1.0],
    linear_seeds=[0],
    segment_fractions=[1.0],
    segment_seeds=[0],
    segment_epochs=3,
    segment_min_steps=60,
    segment_task="opacity",
    supervised_epochs=8,
    prompts_per_class=10,
    n_boot=200,
    methods=("reclf", "convirt"),  # a first look: the headline method and the simplest baseline
)
FULL = DemoSettings(
    synth_n=6000,
    synth_per_class=200,
    classification_n=7000,
    image_size=64,
    pretrain_steps=500,
    pretrain_batch=32,
    seeds=1,
    linear_fractions=[0.01, 0.1, 1.0],
    linear_seeds=[0, 1, 2],
    segment_fractions=[0.1, 1.0],
    segment_seeds=[0],
    segment_epochs=6,
    segment_min_steps=60,
    segment_task="opacity",
    supervised_epochs=12,
    prompts_per_class=20,
    n_boot=500,
)
#: learning check: the mean loss of the last 100 steps must be at most this share of the first 100 steps'
LOSS_DROP = 0.9


def demo_preset(method: str) -> str:
    """The name of the shipped preset a demo run of ``method`` starts from."""
    return f"demo_{method}"


def base_method(label: str) -> str:
    """The registered method behind a demo label (``gloria+bind`` -> ``gloria``)."""
    return label.split("+", 1)[0]


def demo_config(method: str, seed: int, s: DemoSettings, synth: Path, runs: Path, text_cache: Path | None = None):
    """The pretraining config of one demo run: the shipped preset ``demo_<method>`` + the demo's budget.

    The preset is read from the installed package by name, so the recipe (method, encoders,
    optimiser) is the same wherever the demo runs; only the budget, the data and output folders,
    the seed and the shared text-feature file are the demo's. A missing preset is an error, never a
    recipe made up here.
    """
    from reclf.config import load_config, preset_path

    overrides = [
        f"seed={seed}",
        f"name={method}@seed{seed}",
        f"data.root={synth / 'pretrain'}",
        f"train.runs_dir={runs}",
        "train.progress=false",
        f"image_encoder.image_size={s.image_size}",
        f"train.max_steps={s.pretrain_steps}",
        f"data.batch_size={s.pretrain_batch}",
        "train.max_epochs=1000",
    ]
    if text_cache is not None:
        overrides.append(f"text_encoder.cache_file={text_cache}")
    overrides += [f"method.{k}={v}" for k, v in s.method_overrides.items()]
    overrides += list(s.overrides)
    from reclf.methods.params import resolve_method_section

    # the method's registry values too (as the run's config.yaml records them): a changed preset is a changed recipe
    return resolve_method_section(load_config(preset_path(demo_preset(method)), overrides))


#: the demo's sizes given to every task whose config has the field (a new task gets them without an entry)
COMMON_EVAL = ("n_boot", "image_size")


def eval_values(task: str, s: DemoSettings) -> dict[str, Any]:
    """The demo's settings of one task's config (field -> value); the rest keep the config's defaults."""
    names = set(task_spec(task).field_names())
    values: dict[str, Any] = {k: getattr(s, k) for k in COMMON_EVAL if k in names}
    per_task: dict[str, dict[str, Any]] = {
        "zeroshot": {"prompts_per_class": s.prompts_per_class, "binary": True},
        "linear": {"fractions": s.linear_fractions, "seeds": s.linear_seeds},
        "segment": {"fractions": s.segment_fractions, "seeds": s.segment_seeds, "epochs": s.segment_epochs,
                    "min_steps": s.segment_min_steps, "seg_task": s.segment_task},
        "retrieve": {"rerank_k": 50},
    }
    return values | per_task.get(task, {})


def eval_config(task: str, s: DemoSettings, cache: Path | None = None) -> Any:
    """The typed config of ``task`` in the demo: its defaults, the demo's sizes, then ``--eval-set TASK.key=value``.

    An unknown task or key is a ``ConfigError`` naming it (``zeroshot.n_bot``: did you mean ``zeroshot.n_boot``?).
    """
    from reclf.config import ConfigError

    spec = task_spec(task)
    mine: list[str] = []
    for item in s.eval_overrides:
        key, sep, _ = item.partition("=")
        name, dot, _ = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--eval-set {item!r}: expected TASK.KEY=VALUE, e.g. zeroshot.prompts_per_class=5")
        task_spec(name.strip())  # an unknown task: the error names the nearest
        if name.strip() == task:
            mine.append(item.split(".", 1)[1])
    values = eval_values(task, s)
    if cache is not None and "cache_dir" in spec.field_names():
        values["cache_dir"] = str(cache)
    return spec.make_config(values, mine, prefix=f"{task}.")
