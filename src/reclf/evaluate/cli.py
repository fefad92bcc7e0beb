"""``reclf evaluate TASK --model DIR|CKPT --data DIR [options] [--out DIR] [--seed N]``.

Tasks: zeroshot, linear, segment, retrieve, relations, grounding, phrase-grounding, diagnostics, and ``baseline``
(write the floor / ceiling model folders: a random-init twin, or a supervised encoder trained on the labels).
Each run writes ``OUT/results.json`` atomically and prints a table. Heavy imports happen in
``run`` only, so ``reclf --help`` stays instant.

Defaults live in one place, the task's ``*Config`` dataclass: every option here defaults to ``None``
("not given"), and :func:`run_task` sets only the fields that were given (as training does with dotted
overrides). The one default of this module is the feature cache folder, a command-line convenience
(the library caches nothing unless asked).
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

TASKS = ("zeroshot", "linear", "segment", "retrieve", "relations", "grounding", "phrase-grounding", "diagnostics")
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    p = sub.add_parser("zeroshot", help="zero-shot classification with prompt files")
    _common(p)
    p.add_argument("--prompts", default=None, help="prompt YAML or built-in name (synthcxr, chexpert; default auto)")
    p.add_argument("--prompts-per-class", type=int, default=None, help="sample K prompts per class (default all)")
    p.add_argument("--reduce", choices=("mean", "max"), default=None, help="over a class's prompts (default mean)")
    p.add_argument("--binary", action="store_true", default=None,
                   help="also the positive/negative prompt tasks (AUROC)")
    p.add_argument("--split", default=None)

    p = sub.add_parser("linear", help="linear probe on the frozen global feature")
    _common(p)
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

    p = sub.add_parser("segment", help="U-Net segmentation on the encoder's feature pyramid")
    _common(p)
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

    p = sub.add_parser("retrieve", help="image<->report retrieval (Recall@K, Precision@K)")
    _common(p)
    p.add_argument("--modes", default=None, help="comma list of global, local, method (default global,method)")
    p.add_argument("--chunk", type=int, default=None, help="queries scored at a time (bounds memory; 64)")
    p.add_argument("--rerank-k", type=int, default=None,
                   help="score local/method only on each query's global top K (two-stage; 0: all pairs)")
    p.add_argument("--split", default=None)

    p = sub.add_parser("relations", help="true caption vs side/zone/severity/negation and binding (swap) foils")
    _common(p)
    p.add_argument("--score", choices=("method", "global", "local"), default=None, help="default method")
    p.add_argument("--split", default=None,
                   help="rows of this split (SynthCXR relations: valid | test; default test; 'all': every row)")

    p = sub.add_parser("grounding", help="word-region attention vs the true masks (pointing game, IoU)")
    _common(p)
    p.add_argument("--max-images", type=int, default=None)

    p = sub.add_parser("phrase-grounding",
                       help="BioViL's phrase grounding (MS-CXR, SynthCXR): CNR, mIoU over thresholds, pointing game")
    _common(p)
    p.add_argument("--map", choices=("similarity", "attention"), default=None,
                   help="the phrase's map: word-region cosine (default, BioViL's kind) or the method's attention")
    p.add_argument("--smooth-sigma", type=float, default=None, help="Gaussian on the region grid (0; BioViL 1.5)")
    p.add_argument("--region", choices=("box", "mask"), default=None,
                   help="SynthCXR: the bounding box of each exact mask (default) or the mask itself")
    p.add_argument("--split", default=None, help="rows of this split (default: all)")
    p.add_argument("--max-images", type=int, default=None)

    p = sub.add_parser("diagnostics", help="word importance, SRM relations and grounding by word role (SynthCXR)")
    _common(p)
    p.add_argument("--sections", default=None, help="report sections the model reads (default: its own)")
    p.add_argument("--split", default=None)
    p.add_argument("--max-reports", type=int, default=None)

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

    if args.task == "baseline":
        return _baseline(args)
    loaded = load_model(args.model, args.device or "cpu")
    out = Path(args.out) if args.out else default_out(args.task, loaded.label)
    cache = (DEFAULT_CACHE_DIR if args.cache_dir is None else args.cache_dir) or None
    run_task(args.task, loaded, args.data, out, vars(args), cache)
    print(f"wrote {out / 'results.json'}")
    return 0


def given(cls: type, opts: dict[str, Any], **fixed: Any) -> dict[str, Any]:
    """The fields of dataclass ``cls`` that ``opts`` gives (not ``None``), plus ``fixed``; the rest keep their
    defaults. Comma lists (``modes``, ``sections``) become lists."""
    names = {f.name for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in opts.items():
        name = RENAMED.get(key, key)
        if name in names and value is not None:
            values[name] = value.split(",") if name in ("modes", "sections") and isinstance(value, str) else value
    return values | fixed


def run_task(task: str, loaded, data: str | Path, out: Path | None, opts: dict, cache: str | None = None):
    """Run one task with options given as a flat mapping (CLI args or the demo's settings).

    Keys are config field names (``freeze`` stands for ``freeze_encoder``); a missing or ``None`` value
    keeps the task config's default. ``cache``: the feature cache folder (``None``: no cache).
    """
    if task == "zeroshot":
        from reclf.evaluate.tasks.zeroshot import ZeroShotConfig, run_zeroshot

        return run_zeroshot(loaded, data, out, ZeroShotConfig(**given(ZeroShotConfig, opts, cache_dir=cache)))
    if task == "linear":
        from reclf.evaluate.tasks.linear import LinearConfig, run_linear

        return run_linear(loaded, data, out, LinearConfig(**given(LinearConfig, opts, cache_dir=cache)))
    if task == "segment":
        from reclf.evaluate.tasks.segment import SegmentConfig, run_segment_tasks, segment_preset

        values = given(SegmentConfig, opts)
        cfg = segment_preset(values.pop("preset", None), **values)
        return run_segment_tasks(loaded, data, out, cfg, opts.get("seg_task"))
    if task == "retrieve":
        from reclf.evaluate.tasks.retrieve import RetrieveConfig, run_retrieve

        return run_retrieve(loaded, data, out, RetrieveConfig(**given(RetrieveConfig, opts, cache_dir=cache)))
    if task == "relations":
        from reclf.evaluate.tasks.relations import RelationsConfig, run_relations

        return run_relations(loaded, data, out, RelationsConfig(**given(RelationsConfig, opts, cache_dir=cache)))
    if task == "grounding":
        from reclf.evaluate.tasks.grounding import GroundingConfig, run_grounding

        return run_grounding(loaded, data, out, GroundingConfig(**given(GroundingConfig, opts)))
    if task == "phrase-grounding":
        from reclf.evaluate.tasks.phrase_grounding import PhraseGroundingConfig, run_phrase_grounding

        cfg = PhraseGroundingConfig(**given(PhraseGroundingConfig, opts))
        return run_phrase_grounding(loaded, data, out, cfg)
    if task == "diagnostics":
        from reclf.evaluate.tasks.diagnostics import DiagnosticsConfig, run_diagnostics

        return run_diagnostics(loaded, data, out, DiagnosticsConfig(**given(DiagnosticsConfig, opts)))
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


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
