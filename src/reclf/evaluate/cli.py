"""``reclf evaluate TASK --model DIR|CKPT --data DIR [options] [--out DIR] [--seed N]``.

Tasks: zeroshot, linear, segment, retrieve, relations, grounding, diagnostics, and ``baseline`` (write the
floor / ceiling model folders: a random-init twin, or a supervised encoder trained on the labels).
Each run writes ``OUT/results.json`` atomically and prints a table. Heavy imports happen in
``run`` only, so ``reclf --help`` stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

TASKS = ("zeroshot", "linear", "segment", "retrieve", "relations", "grounding", "diagnostics")


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
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap, prompt sampling, subsets")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the model's own)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--cache-dir", default="runs/.cache/features", help="feature cache ('' disables)")
    p.add_argument("--device", default="cpu")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    p = sub.add_parser("zeroshot", help="zero-shot classification with prompt files")
    _common(p)
    p.add_argument("--prompts", default="auto", help="prompt YAML or built-in name (synthcxr, chexpert)")
    p.add_argument("--prompts-per-class", type=int, default=None, help="sample K prompts per class (default all)")
    p.add_argument("--reduce", choices=("mean", "max"), default="mean")
    p.add_argument("--binary", action="store_true", help="also the positive/negative prompt tasks (AUROC)")
    p.add_argument("--split", default=None)

    p = sub.add_parser("linear", help="linear probe on the frozen global feature")
    _common(p)
    p.add_argument("--fractions", type=_floats, default=[0.01, 0.1, 1.0], help="label fractions, e.g. 1,10,100")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="probe seeds, e.g. 0,1,2")
    p.add_argument("--target", choices=("auto", "labels", "class"), default="auto")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--label-set", choices=("auto", "competition", "all"), default="auto",
                   help="CheXpert labels: competition (5; default for CheXpert data) or all 14")
    p.add_argument("--uncertain", choices=("ignore", "ones", "zeros", "gloria"), default="ignore",
                   help="the probe's policy for -1 labels (U-Ones, U-Zeros, GLoRIA/MGCA per label, or masked)")
    p.add_argument("--recipe", choices=("cached", "mgca"), default="cached",
                   help="cached features, full batch (fast) or MGCA's (AdamW, batch 48, 50 epochs, augmentation)")
    p.add_argument("--epochs", type=int, default=50, help="epochs of the mgca recipe")

    p = sub.add_parser("segment", help="U-Net segmentation on the encoder's feature pyramid")
    _common(p)
    p.add_argument("--fractions", type=_floats, default=[0.01, 0.1, 1.0])
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2])
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
    p.add_argument("--modes", default="global,method", help="comma list of global, local, method")
    p.add_argument("--chunk", type=int, default=64, help="queries scored at a time (bounds memory)")
    p.add_argument("--rerank-k", type=int, default=0,
                   help="score local/method only on each query's global top K (two-stage; 0: all pairs)")
    p.add_argument("--split", default=None)

    p = sub.add_parser("relations", help="true caption vs side/zone/severity/negation foils")
    _common(p)
    p.add_argument("--score", choices=("method", "global", "local"), default="method")

    p = sub.add_parser("grounding", help="word-region attention vs the true masks (pointing game, IoU)")
    _common(p)
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10)


def default_out(task: str, label: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
    return Path("runs") / "eval" / task / safe


def run(args: argparse.Namespace) -> int:
    from reclf.evaluate.loading import load_model

    if args.task == "baseline":
        return _baseline(args)
    loaded = load_model(args.model, getattr(args, "device", "cpu"))
    out = Path(args.out) if args.out else default_out(args.task, loaded.label)
    cache = args.cache_dir or None
    run_task(args.task, loaded, args.data, out, vars(args), cache)
    print(f"wrote {out / 'results.json'}")
    return 0


def run_task(task: str, loaded, data: str | Path, out: Path | None, opts: dict, cache: str | None = None):
    """Run one task with options given as a flat mapping (CLI args or the demo's settings)."""
    common = {"image_size": opts.get("image_size"), "n_boot": opts.get("n_boot", 1000)}
    seed = opts.get("seed", 0)
    if task == "zeroshot":
        from reclf.evaluate.zeroshot import ZeroShotConfig, run_zeroshot

        cfg = ZeroShotConfig(prompts=opts.get("prompts", "auto"), prompts_per_class=opts.get("prompts_per_class"),
                             reduce=opts.get("reduce", "mean"), binary=bool(opts.get("binary", False)),
                             split=opts.get("split"), batch_size=opts.get("batch_size", 32), seed=seed,
                             cache_dir=cache, **common)
        return run_zeroshot(loaded, data, out, cfg)
    if task == "linear":
        from reclf.evaluate.linear import LinearConfig, run_linear

        cfg = LinearConfig(fractions=opts.get("fractions", [0.01, 0.1, 1.0]), seeds=opts.get("seeds", [0, 1, 2]),
                           target=opts.get("target", "auto"), max_steps=opts.get("max_steps", 300),
                           label_set=opts.get("label_set", "auto"), uncertain=opts.get("uncertain", "ignore"),
                           recipe=opts.get("recipe", "cached"), epochs=opts.get("epochs") or 50,
                           batch_size=opts.get("batch_size", 32), cache_dir=cache, **common)
        return run_linear(loaded, data, out, cfg)
    if task == "segment":
        from reclf.evaluate.segment import run_segment_tasks, segment_preset

        cfg = segment_preset(opts.get("preset"), fractions=opts.get("fractions", [0.01, 0.1, 1.0]),
                             seeds=opts.get("seeds", [0, 1, 2]), freeze_encoder=opts.get("freeze"),
                             epochs=opts.get("epochs"), min_steps=opts.get("min_steps"), loss=opts.get("loss"),
                             decoder_channels=opts.get("decoder_channels"), balance_train=opts.get("balance_train"),
                             device=opts.get("device", "cpu"), **common)
        return run_segment_tasks(loaded, data, out, cfg, opts.get("seg_task"))
    if task == "retrieve":
        from reclf.evaluate.retrieve import RetrieveConfig, run_retrieve

        modes = opts.get("modes", "global,method")
        cfg = RetrieveConfig(modes=modes.split(",") if isinstance(modes, str) else list(modes),
                             chunk=opts.get("chunk", 64), split=opts.get("split"), rerank_k=opts.get("rerank_k", 0),
                             batch_size=opts.get("batch_size", 32), seed=seed, cache_dir=cache, **common)
        return run_retrieve(loaded, data, out, cfg)
    if task == "relations":
        from reclf.evaluate.relations import RelationsConfig, run_relations

        cfg = RelationsConfig(score=opts.get("score", "method"), batch_size=opts.get("batch_size", 32), seed=seed,
                              cache_dir=cache, **common)
        return run_relations(loaded, data, out, cfg)
    if task == "grounding":
        from reclf.evaluate.grounding import GroundingConfig, run_grounding

        cfg = GroundingConfig(max_images=opts.get("max_images"), seed=seed, **common)
        return run_grounding(loaded, data, out, cfg)
    if task == "diagnostics":
        from reclf.evaluate.diagnostics import DiagnosticsConfig, run_diagnostics

        secs = opts.get("sections")
        cfg = DiagnosticsConfig(sections=secs.split(",") if isinstance(secs, str) else secs, split=opts.get("split"),
                                max_reports=opts.get("max_reports"), batch_size=opts.get("batch_size", 32),
                                seed=seed, **common)
        return run_diagnostics(loaded, data, out, cfg)
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def _baseline(args: argparse.Namespace) -> int:
    from reclf.evaluate.baselines import SupervisedConfig, make_random, train_supervised
    from reclf.evaluate.loading import load_model

    like = load_model(args.model).model
    if args.kind == "random":
        make_random(like, args.out, args.seed)
    else:
        if not args.data:
            raise ValueError("--kind supervised needs --data (the classification set)")
        info = train_supervised(like, args.data, args.out, SupervisedConfig(epochs=args.epochs, seed=args.seed))
        print(f"supervised ceiling: best validation macro AUROC {info['best_val_macro_auroc']:.3f}")
    print(f"wrote {args.out}")
    return 0
