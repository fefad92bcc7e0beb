"""The demo: an application over every layer (SynthCXR -> pretrain every method -> every evaluation -> report).

- ``cli``: ``reclf demo [--quick]``, the stages in order and the report (its docstring tells the story);
- ``settings``: the recipe (methods, tasks, sizes, budget; the shipped ``demo_<method>`` presets);
- ``stages``: SynthCXR, shared text features, pretraining, floor and ceiling, evaluation (idempotent);
- ``learning``: did a method learn (loss check, zero-shot above chance, linear probe above the floor);
- process pool and console lines: ``reclf.utils.jobs``, ``reclf.utils.console``.
"""

from reclf.demo.cli import add_arguments, run
from reclf.demo.learning import learning_check, learning_verdicts
from reclf.demo.settings import FULL, METHODS, QUICK, TASKS, DemoSettings, demo_config, demo_preset
from reclf.demo.stages import baselines, ensure_synth, evaluate_all, evaluate_model, pretrain_one, text_features

__all__ = [
    "FULL",
    "METHODS",
    "QUICK",
    "TASKS",
    "DemoSettings",
    "add_arguments",
    "baselines",
    "demo_config",
    "demo_preset",
    "ensure_synth",
    "evaluate_all",
    "evaluate_model",
    "learning_check",
    "learning_verdicts",
    "pretrain_one",
    "run",
    "text_features",
]
