"""``reclf evaluate TASK --model DIR|CKPT --data DIR [options] [key=value ...] [--out DIR]``.

One sub-command per entry of the task registry (``reclf.evaluate.tasks.TASKS``), and ``baseline``
(write the floor / ceiling model folders: a random-init twin, or a supervised encoder trained on the
labels). Each run writes ``OUT/results.json`` atomically and prints a table. Heavy imports happen in
``run`` only, so ``reclf --help`` stays instant.

The task's config is resolved as ``reclf pretrain`` resolves its own (:func:`task_config`): the task's
``*Config`` dataclass defaults, then the options given (every option defaults to ``None``, "not given"),
then ``key=value`` overrides of any config field (``n_boot=200 prompts_per_class=5``). An unknown key,
or an option the task has no field for, is an error naming it and the nearest valid key (exit 2), and
the ranges are checked, all before the model is loaded. The one default of this module is the feature
cache folder, a command-line convenience (the library caches nothing unless asked).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from reclf.evaluate.tasks import TASKS

__all__ = ["TASKS", "add_arguments", "given", "run", "run_task", "task_config"]

#: ``--cache-dir`` when not given ('' disables the cache).
DEFAULT_CACHE_DIR = "runs/.cache/features"
#: Option names that differ from their config field.
RENAMED = {"freeze": "freeze_encoder"}


def _floats(text: str) -> list[float]:
    """``"1,10,100"`` (percent) or ``"0.01,0.1,1"`` -> fractions."""
    vals = [float(v) for v in text.split(",") if v.strip()]
    return [v / 100.0 if any(x > 1 for x in vals) else v for v in vals]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _common(p: argparse.ArgumentParser, needs_data: bool = True) -> None:
    p.add_argument("--model", required=True, help="exported model folder, run folder or checkpoint")
    p.add_argument("--data", required=needs_data, help="study table folder (e.g. out/synth/zeroshot_5x200)")
    p.add_argument("--out", default=None, help="output folder (default: runs/eval/TASK/MODEL)")
    p.add_argument("--seed", type=int, default=None, help="seed of the bootstrap, prompt sampling, subsets (0)")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the model's own)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (the task's default)")
    p.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples for the 95%% intervals (1000)")
    p.add_argument("--cache-dir", default=None, help=f"feature cache (default {DEFAULT_CACHE_DIR}; '' disables)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")


def _zeroshot_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", default=None, help="prompt YAML or built-in name (synthcxr, chexpert; default auto)")
    p.add_argument("--prompts-per-class", type=int, default=None, help="sample K prompts per class (default all)")
    p.add_argument("--reduce", choices=("mean", "max"), default=None, help="over a class's prompts (default mean)")
    p.add_argument("--binary", action="store_true", default=None,
                   help="also the positive/negative prompt tasks (AUROC)")
    p.add_argument("--split", default=None)


def _linear_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fractions", type=_floats, default=None, help="label fractions, e.g. 1,10,100 (default)")
    p.add_argument("--seeds", type=_ints, default=None, help="probe seeds, e.g. 0,1,2 (default)")
    p.add_argument("--target", choices=("auto", "labels", "class"), default=None, help="default auto")
    p.add_argument("--max-steps", type=int, default=None, help="full-batch steps of the cached recipe (300)")
    p.add_argument("--label-set", choices=("auto", "competition", "all"), default=None,
                   help="CheXpert labels: competition (5; default for CheXpert data) or all 14")
    p.add_argument("--uncertain", choices=("ignore", "ones", "zeros", "gloria"), default=None,
                   help="the probe's policy for -1 labels (U-Ones, U-Zeros, GLoRIA/MGCA per label, or masked: "
                        "ignore, the default)")
    p.add_argument("--recipe", choices=("cached", "mgca"), default=None,
                   help="cached features, full batch (fast, the default) or MGCA's (AdamW, batch 48, 50 epochs, "
                        "augmentation)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the mgca recipe (50)")


def _segment_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fractions", type=_floats, default=None, help="label fractions, e.g. 1,10,100 (default)")
    p.add_argument("--seeds", type=_ints, default=None, help="seeds, e.g. 0,1,2 (default)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--freeze-encoder", dest="freeze", action="store_true", default=None,
                   help="train the decoder only (MGCA; default)")
    g.add_argument("--finetune", dest="freeze", action="store_false", help="fine-tune the encoder too (GLoRIA)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the preset's, else 10)")
    p.add_argument("--min-steps", type=int, default=None, help="at least this many updates (small fractions; 120)")
    p.add_argument("--preset", choices=("mgca", "gloria"), default=None,
                   help="the field's protocol: mgca (frozen, 50 epochs) or gloria (fine-tuned); see docs/evaluation.md")
    p.add_argument("--loss", choices=("bce_dice", "focal_dice"), default=None, help="segmentation loss")
    p.add_argument("--decoder-channels", type=_ints, default=None,
                   help="U-Net widths coarse to fine, e.g. 256,128,64,32,16")
    p.add_argument("--balanced", dest="balance_train", action="store_true", default=None,
                   help="train on every positive + as many seeded negatives (MGCA, GLoRIA)")
    p.add_argument("--seg-task", default=None,
                   help="rows whose `task` column equals this (SynthCXR: pneumothorax | opacity); default: each")


def _retrieve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modes", default=None, help="comma list of global, local, method (default global,method)")
    p.add_argument("--chunk", type=int, default=None, help="queries scored at a time (bounds memory; 64)")
    p.add_argument("--rerank-k", type=int, default=None,
                   help="score local/method only on each query's global top K (two-stage; 0: all pairs)")
    p.add_argument("--split", default=None)


def _relations_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--score", choices=("method", "global", "local"), default=None, help="default method")
    p.add_argument("--split", default=None,
                   help="rows of this split (SynthCXR relations: valid | test; default test; 'all': every row)")


def _grounding_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-images", type=int, default=None)


def _phrase_grounding_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--map", choices=("similarity", "attention"), default=None,
                   help="the phrase's map: word-region cosine (default, BioViL's kind) or the method's attention")
    p.add_argument("--smooth-sigma", type=float, default=None, help="Gaussian on the region grid (0; BioViL 1.5)")
    p.add_argument("--region", choices=("box", "mask"), default=None,
                   help="SynthCXR: the bounding box of each exact mask (default) or the mask itself")
    p.add_argument("--split", default=None, help="rows of this split (default: all)")
    p.add_argument("--max-images", type=int, default=None)


def _diagnostics_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sections", default=None, help="report sections the model reads (default: its own)")
    p.add_argument("--split", default=None)
    p.add_argument("--max-reports", type=int, default=None)


#: the hand-written options of a task (its most used config fields, with choices and help); every field is
#: also a ``key=value`` override, so a task without an entry here has its config all the same
TASK_OPTIONS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "zeroshot": _zeroshot_options,
    "linear": _linear_options,
    "segment": _segment_options,
    "retrieve": _retrieve_options,
    "relations": _relations_options,
    "grounding": _grounding_options,
    "phrase-grounding": _phrase_grounding_options,
    "diagnostics": _diagnostics_options,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from reclf.evaluate.tasks import TASKS

    sub = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for spec in TASKS.values():
        p = sub.add_parser(spec.name, help=spec.description, description=f"{spec.description}. Data: {spec.data}.")
        _common(p)
        TASK_OPTIONS.get(spec.name, lambda _: None)(p)
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="key=value",
            help=f"a field of the task's config ({spec.config_name}; docs/evaluation.md), e.g. n_boot=200; "
            "applied over the options",
        )

    p = sub.add_parser("baseline", help="write a floor (random init) or ceiling (supervised) model folder")
    p.add_argument("--kind", choices=("random", "supervised"), required=True)
    p.add_argument("--model", required=True, help="model whose architecture to copy")
    p.add_argument("--data", default=None, help="classification set (for --kind supervised)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the supervised ceiling (10)")


def default_out(task: str, label: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
    return Path("runs") / "eval" / task / safe


def run(args: argparse.Namespace) -> int:
    from reclf.evaluate.loading import load_model
    from reclf.evaluate.tasks import task_spec

    if args.task == "baseline":
        return _baseline(args)
    spec = task_spec(args.task)
    cache = (DEFAULT_CACHE_DIR if args.cache_dir is None else args.cache_dir) or None
    cfg = task_config(args.task, vars(args), args.overrides or (), cache)  # checked before the model is loaded
    loaded = load_model(args.model, args.device or "cpu")
    out = Path(args.out) if args.out else default_out(args.task, loaded.label)
    spec.run(loaded, args.data, out, cfg)
    print(f"wrote {out / 'results.json'}")
    return 0


#: ``reclf evaluate`` options that are not task config fields (the model, the data, where to write)
CLI_ONLY = frozenset({"model", "data", "out", "device", "cache_dir", "task", "overrides", "kind", "command", "_module"})


def given(cls: type, opts: dict[str, Any], **fixed: Any) -> dict[str, Any]:
    """The fields of dataclass ``cls`` that ``opts`` gives (not ``None``), plus ``fixed``; the rest keep their
    defaults. Comma lists (``modes``, ``sections``) become lists. An option given for a field ``cls`` does not
    have (``--batch-size`` for grounding) is an error naming it, never dropped without a word."""
    from reclf.config import unknown_key_error

    names = [f.name for f in fields(cls)]
    values: dict[str, Any] = {}
    for key, value in opts.items():
        name = RENAMED.get(key, key)
        if value is None or (key in CLI_ONLY and not (key == "device" and name in names)):
            continue  # the command's own options (--cache-dir is resolved by `run`); --device is segment's too
        if name not in names:
            raise unknown_key_error(name, names, prefix="") from None
        values[name] = value.split(",") if name in ("modes", "sections") and isinstance(value, str) else value
    return values | fixed


def task_config(task: str, opts: Mapping[str, Any] | None = None, overrides: Sequence[str] = (),
                cache: str | None = None, prefix: str = "") -> Any:
    """The config of ``task``: its dataclass defaults <- the options given (``opts``, CLI or the demo's sizes,
    ``None`` = not given) <- ``key=value`` ``overrides``; ``cache`` fills ``cache_dir`` where the task has one.

    Unknown keys and out-of-range values are :class:`~reclf.config.ConfigError` s naming the key.
    """
    from reclf.evaluate.tasks import task_spec

    spec = task_spec(task)
    cls = spec.config_class
    fixed = {"cache_dir": cache} if "cache_dir" in spec.field_names() and cache is not None else {}
    values = given(cls, dict(opts or {}), **fixed)
    return spec.make_config(values, overrides, prefix)


def run_task(task: str, loaded, data: str | Path, out: Path | None, cfg: Any, cache: str | None = None):
    """Run one task on ``loaded``. ``cfg``: the task's config object (``task_config``), or a mapping of its
    fields (unknown keys are errors); ``cache``: the feature cache folder for a mapping (``None``: no cache)."""
    from reclf.evaluate.tasks import task_spec

    spec = task_spec(task)
    if isinstance(cfg, Mapping):
        cfg = task_config(task, cfg, (), cache)
    return spec.run(loaded, data, out, cfg)


def _baseline(args: argparse.Namespace) -> int:
    from reclf.evaluate.baselines import SupervisedConfig, make_random, train_supervised
    from reclf.evaluate.loading import load_model

    like = load_model(args.model).model
    if args.kind == "random":
        make_random(like, args.out, args.seed or 0)
    else:
        if not args.data:
            raise ValueError("--kind supervised needs --data (the classification set)")
        info = train_supervised(like, args.data, args.out, SupervisedConfig(**given(SupervisedConfig, vars(args))))
        print(f"supervised ceiling: best validation macro AUROC {info['best_val_macro_auroc']:.3f}")
    print(f"wrote {args.out}")
    return 0
