"""``reclf demo [--quick]``: SynthCXR -> pretrain every method -> every evaluation -> one report.

1. SynthCXR is generated into ``out/synth`` (``out/synth-quick``) unless it is there already.
2. The frozen text encoder of the demo presets encodes every report once (``text features``): all
   runs share that file, so a training step costs what the image side costs.
3. ``convirt``, ``gloria``, ``mgca``, ``reclf``, ``reclf-no-srm`` and ``reclf-no-irm`` pretrain on
   the same data with the same encoders and budget: the shipped preset ``demo_<method>`` (never a
   file of the working folder) plus the demo's budget below, ``seeds`` pretraining seeds each.
   Each run's loss must fall (``learning check``), or the method is marked as not learning.
4. The floor (random init, same architecture) and the ceiling (supervised on the classification
   labels) are built once.
5. Every model runs every task: zeroshot, linear, segment, retrieve, relations, grounding,
   diagnostics.
6. ``runs/demo/report.md`` (``runs/demo-quick/``) with tables, paired differences, loss curves and
   figures; a method whose zero-shot interval contains chance or whose linear probe is not above
   the floor is marked **did not learn**, and the demo exits non-zero when no method learned.

The console shows one line per stage (progress and time) and the summary table at the end; what
Lightning and the tasks print goes to ``<out>/logs/``.

Idempotent and resumable: each finished step leaves a marker (``done.json`` of a pretraining
run, ``baseline.json`` of a baseline, ``results.json`` of an evaluation) and is skipped when the
demo runs again; an interrupted step simply runs again. ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

METHODS = ("convirt", "gloria", "mgca", "reclf", "reclf-no-srm", "reclf-no-irm")
TASKS = ("zeroshot", "linear", "segment", "retrieve", "relations", "grounding", "diagnostics")


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


QUICK = DemoSettings(
    synth_n=1500,
    synth_per_class=60,
    classification_n=1200,
    image_size=64,
    pretrain_steps=250,
    pretrain_batch=32,
    seeds=1,
    linear_fractions=[0.1, 1.0],
    linear_seeds=[0],
    segment_fractions=[1.0],
    segment_seeds=[0],
    segment_epochs=3,
    segment_min_steps=24,
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a first look in a few minutes (smaller everything)")
    parser.add_argument("--out", default=None, help="demo folder (default runs/demo or runs/demo-quick)")
    parser.add_argument("--synth", default=None, help="SynthCXR folder (default out/synth or out/synth-quick)")
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma list of methods to pretrain (default all: {','.join(METHODS)}; --quick: reclf,convirt)",
    )
    parser.add_argument("--seeds", type=int, default=None, help="pretraining seeds per method")
    parser.add_argument("--steps", type=int, default=None, help="pretraining steps per run")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--no-baselines", action="store_true", help="skip the floor and ceiling")
    parser.add_argument("--fresh", action="store_true", help="delete the demo folder first (not SynthCXR)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads per job (1 is fastest for these tiny models on small CPUs)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="pretraining runs / model evaluations at once, one process each (default 2: one per core)",
    )


def _say(text: str) -> None:
    print(f"[reclf demo] {text}", flush=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


@contextlib.contextmanager
def quiet(log: Path) -> Iterator[None]:
    """Send everything this process prints (Python, Lightning, warnings, C libraries) to ``log``.

    File-descriptor level, so it catches what logging handlers and native code write too; the
    console keeps one line per stage. Used inside the demo's worker processes (and around a job
    in the main process when ``--jobs 1``).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a", encoding="utf-8") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def ensure_synth(folder: Path, s: DemoSettings) -> Path:
    """Generate SynthCXR into ``folder`` unless a complete one (with manifest.json) is there."""
    if (folder / "manifest.json").is_file():
        _say(f"SynthCXR: using {folder}")
        return folder
    from reclf.data.synthetic.generate import generate

    t = time.time()
    _say(f"SynthCXR: generating {s.synth_n} pretraining studies and the evaluation sets ({s.image_size} px)")
    generate(
        folder,
        n=s.synth_n,
        size=max(s.image_size, 64),
        per_class=s.synth_per_class,
        classification_n=s.classification_n,
        workers=2,
        overwrite=True,
        preview=False,
    )
    _say(f"SynthCXR: {folder} in {_clock(time.time() - t)}")
    return folder


def demo_preset(method: str) -> str:
    """The name of the shipped preset a demo run of ``method`` starts from."""
    return f"demo_{method}"


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
    return load_config(preset_path(demo_preset(method)), overrides)


def text_features(methods: list[str], s: DemoSettings, synth: Path, root: Path) -> tuple[Path | None, dict]:
    """Encode every report of the pretraining, retrieval and relations sets once with the demo's frozen
    text encoder (the same for every method, checked here) into one file that every run reads."""
    from reclf.config import to_dict
    from reclf.methods.params import method_params
    from reclf.train.text_cache import build_text_cache, corpus_reports

    cfgs = [demo_config(m, 0, s, synth, root) for m in methods]
    text = cfgs[0].text_encoder
    if any(to_dict(c.text_encoder) != to_dict(text) for c in cfgs):
        raise ValueError("the demo presets disagree on text_encoder; every demo method must share one text side")
    if not text.freeze:
        return None, {"frozen": False}
    path = root / "cache" / f"text-{text.name}-{text.pooling}-{text.max_tokens}.safetensors"
    reports = corpus_reports([synth / n for n in ("pretrain", "retrieval_8x200", "relations")], text.sections)
    import torch

    t = time.time()
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # the stage runs alone: every core
    try:
        with quiet(root / "logs" / "text-features.log"):
            # MGCA's word weights are the [CLS] attention: keep it only when an MGCA-like run needs it
            need_attention = any(method_params(**c.method).token_weight > 0 for c in cfgs)
            result = build_text_cache(text, reports, path, cls_attention=need_attention)
    finally:
        torch.set_num_threads(threads)
    info = {
        "frozen": True,
        "encoder": text.name,
        "file": str(path),
        "reports": result.reports,
        "encoded_now": result.encoded,
        "truncated": result.truncated,
        "truncated_share": round(result.truncated / max(result.reports, 1), 4),
        "max_tokens": text.max_tokens,
        "seconds": round(time.time() - t, 1),
    }
    _say(
        f"text features: {result.reports} reports by the frozen {text.name} "
        f"({result.encoded} encoded now) in {_clock(time.time() - t)}; "
        f"{100 * info['truncated_share']:.1f} % longer than {text.max_tokens} tokens (their tail is cut)"
    )
    return path, info


def learning_check(run_dir: str | Path, window: int = 100) -> dict[str, Any]:
    """Mean training loss of the first and the last ``window`` steps (at most a quarter of the run each);
    ``learned``: the last is at most ``LOSS_DROP`` times the first (a loss that stays at ln(batch) means
    nothing was learned)."""
    import csv

    points: dict[int, float] = {}
    path = Path(run_dir) / "metrics.csv"
    if path.is_file():
        with open(path, newline="") as fh:
            for row in csv.reader(fh):
                if len(row) == 4 and row[2] == "train/loss":
                    with contextlib.suppress(ValueError):
                        points[int(row[0])] = float(row[3])
    steps = sorted(points)
    if not steps:
        return {"learned": False, "reason": "no training loss logged"}
    window = max(1, min(window, steps[-1] // 4))  # short runs: the first and last quarter, never overlapping
    first = [points[k] for k in steps if k <= steps[0] + window]
    last = [points[k] for k in steps if k > steps[-1] - window]
    f, l_ = sum(first) / len(first), sum(last) / len(last)
    return {
        "first_loss": round(f, 4),
        "last_loss": round(l_, 4),
        "ratio": round(l_ / f, 4) if f else None,
        "learned": bool(f > 0 and l_ <= LOSS_DROP * f),
        "window": window,
        "steps": steps[-1],
    }


def pretrain_one(
    method: str, seed: int, s: DemoSettings, synth: Path, root: Path, text_cache: Path | None = None
) -> Path:
    """Pretrain (or reuse) one method/seed; returns its exported model folder."""
    from reclf.utils.io import atomic_write_json

    marker = root / "pretrain" / f"{method}@seed{seed}" / "done.json"
    if marker.is_file():
        export = Path(json.loads(marker.read_text())["export_dir"])
        if (export / "config.json").is_file():
            return export
    from reclf.train import pretrain

    cfg = demo_config(method, seed, s, synth, root / "pretrain", text_cache)
    t = time.time()
    with quiet(root / "logs" / f"pretrain-{method}@seed{seed}.log"):
        result = pretrain(cfg)
    if result.export_dir is None:
        raise RuntimeError(f"pretraining {method} (seed {seed}) produced no export; see {result.run_dir}")
    atomic_write_json(
        marker,
        {
            "export_dir": str(result.export_dir),
            "run_dir": str(result.run_dir),
            "seconds": round(time.time() - t, 1),
            "learning": learning_check(result.run_dir),
            "summary": result.summary,
        },
    )
    return result.export_dir


def baselines(like: Path, s: DemoSettings, synth: Path, root: Path) -> list[Path]:
    from reclf.evaluate.baselines import BASELINE_FILE, SupervisedConfig, make_random, train_supervised
    from reclf.evaluate.loading import load_model

    floor, ceiling = root / "baselines" / "floor-random", root / "baselines" / "ceiling-supervised"
    with quiet(root / "logs" / "baselines.log"):
        model = load_model(like).model
        if not (floor / BASELINE_FILE).is_file():
            make_random(model, floor, seed=12345)
        if not (ceiling / BASELINE_FILE).is_file():
            train_supervised(
                model,
                synth / "classification",
                ceiling,
                SupervisedConfig(epochs=s.supervised_epochs, image_size=s.image_size),
            )
    return [floor, ceiling]


TASK_DATA = {
    "zeroshot": "zeroshot_5x200",
    "linear": "classification",
    "segment": "segmentation",
    "retrieve": "retrieval_8x200",
    "relations": "relations",
    "grounding": "relations",
    "diagnostics": "relations",
}
IMAGE_ONLY = ("linear", "segment")


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def _pool(jobs: int, threads: int):
    """A process pool for independent demo jobs (each with its own torch threads), or None for jobs=1."""
    if jobs <= 1:
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # fork after torch/OpenMP start-up can hang
    return ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(threads,))


def _map(pool, fn, items: list[tuple], done: Callable[[int, Any, float, int], None] | None = None) -> list[Any]:
    """``fn(*item)`` for every item (in the pool when there is one); ``done(i, result, seconds, n_done)`` as
    each ends (``i``: the item's index, ``n_done``: how many have ended so far)."""
    start = time.time()
    if pool is None:
        out = []
        for i, item in enumerate(items):
            out.append(fn(*item))
            if done:
                done(i, out[-1], time.time() - start, i + 1)
        return out
    from concurrent.futures import as_completed

    futures = {pool.submit(fn, *item): i for i, item in enumerate(items)}
    results: dict[int, Any] = {}
    for f in as_completed(futures):
        i = futures[f]
        results[i] = f.result()
        if done:
            done(i, results[i], time.time() - start, len(results))
    return [results[i] for i in range(len(items))]


def evaluate_all(
    models: dict[str, Path], tasks: list[str], s: DemoSettings, synth: Path, root: Path, pool=None
) -> list[Path]:
    items = [(label, path, tasks, s, synth, root) for label, path in models.items()]
    labels = list(models)

    def done(i: int, outs: list[Path], seconds: float, n_done: int) -> None:
        _say(f"evaluate [{n_done}/{len(items)}] {labels[i]}: {len(outs)} tasks · {_clock(seconds)} elapsed")

    return [out for outs in _map(pool, evaluate_model, items, done) for out in outs]


def evaluate_model(label: str, path: Path, tasks: list[str], s: DemoSettings, synth: Path, root: Path) -> list[Path]:
    """Every task for one model (skipping tasks whose results.json exists)."""
    from reclf.evaluate.cli import run_task
    from reclf.evaluate.loading import load_model

    done: list[Path] = []
    opts = {
        "n_boot": s.n_boot,
        "prompts_per_class": s.prompts_per_class,
        "fractions": s.linear_fractions,
        "seeds": s.linear_seeds,
        "image_size": s.image_size,
        "binary": True,
        "rerank_k": 50,
    }
    loaded = None
    for task in tasks:
        if label.startswith("ceiling") and task not in IMAGE_ONLY:
            continue  # the supervised ceiling has no trained text side
        out = root / "eval" / task / label.replace(":", "-")
        if (out / "results.json").is_file():
            done.append(out)
            continue
        with quiet(root / "logs" / f"evaluate-{label.replace(':', '-')}.log"):
            if loaded is None:
                loaded = load_model(path)
                loaded.label = label
            task_opts = dict(opts)
            if task == "segment":
                task_opts.update(
                    fractions=s.segment_fractions,
                    seeds=s.segment_seeds,
                    epochs=s.segment_epochs,
                    min_steps=s.segment_min_steps,
                    seg_task=s.segment_task,
                )
            t = time.time()
            print(f"== {task} · {label}", flush=True)
            run_task(task, loaded, synth / TASK_DATA[task], out, task_opts, str(root / "cache"))
            print(f"== {task} · {label}: {time.time() - t:.0f} s", flush=True)
        done.append(out)
    return done


def learning_verdicts(
    merged: dict[str, dict[str, dict[str, Any]]], checks: dict[str, dict[str, Any]]
) -> dict[str, list[str]]:
    """Why each pretrained method did not learn (empty list: it learned), from the loss check and
    the evaluation: a zero-shot interval that contains chance, a linear probe not above the floor."""
    verdicts: dict[str, list[str]] = {}
    floor = (merged.get("linear", {}).get("floor:random") or {}).get("100%/auroc")
    for label, check in checks.items():
        reasons: list[str] = []
        if not check.get("learned", False):
            reasons.append(f"loss did not fall (last/first {check.get('ratio')})")
        zs = (merged.get("zeroshot", {}).get(label) or {}).get("method/accuracy")
        chance = (merged.get("zeroshot", {}).get(label) or {}).get("chance/accuracy")
        if zs and chance and zs.get("ci_low") is not None and zs["ci_low"] <= chance["value"]:
            reasons.append(f"zero-shot interval contains chance ({zs['ci_low']:.3f} <= {chance['value']:.3f})")
        lin = (merged.get("linear", {}).get(label) or {}).get("100%/auroc")
        if lin and floor and lin.get("ci_low") is not None and lin["ci_low"] <= floor["value"]:
            reasons.append(f"linear probe not above the random floor ({lin['ci_low']:.3f} <= {floor['value']:.3f})")
        verdicts[label] = reasons
    return verdicts


def run(args: argparse.Namespace) -> int:
    import torch

    from reclf.config import to_dict
    from reclf.evaluate.report import merge_seeds, summary_rows, write_report
    from reclf.evaluate.results import find_results
    from reclf.utils.io import atomic_write_json

    s = replace(QUICK if args.quick else FULL)
    if args.seeds:
        s.seeds = args.seeds
    if args.steps:
        s.pretrain_steps = args.steps
    root = Path(args.out or ("runs/demo-quick" if args.quick else "runs/demo"))
    synth = Path(args.synth or ("out/synth-quick" if args.quick else "out/synth"))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else list(s.methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad_tasks = [t for t in tasks if t not in TASK_DATA]
    if bad_tasks:
        raise ValueError(f"unknown task(s) {bad_tasks}; choose from {', '.join(TASK_DATA)}")
    if args.fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, args.threads))
    timings: dict[str, float] = {}
    t0 = time.time()
    _say(
        f"{len(methods)} methods × {s.seeds} seed(s), {s.pretrain_steps} steps of batch {s.pretrain_batch}; "
        f"logs in {root / 'logs'}"
    )
    ensure_synth(synth, s)
    timings["synth_s"] = round(time.time() - t0, 1)
    t = time.time()
    text_cache, text_info = text_features(methods, s, synth, root)
    timings["text_features_s"] = round(time.time() - t, 1)
    pool = _pool(args.jobs, args.threads)
    t = time.time()
    # the slowest runs (all-pairs local matching) first, so that two workers finish close together
    order = sorted(methods, key=lambda m: (m not in ("reclf", "reclf-no-irm", "reclf-no-srm"), m != "gloria"))
    runs = [(method, seed, s, synth, root, text_cache) for method in order for seed in range(s.seeds)]
    _say(f"pretrain: {len(runs)} runs, {min(args.jobs, len(runs))} at a time")

    def pretrained(i: int, export: Path, seconds: float, n_done: int) -> None:
        method, seed = runs[i][:2]
        marker = json.loads((root / "pretrain" / f"{method}@seed{seed}" / "done.json").read_text())
        c = marker.get("learning", {})
        verdict = "loss fell" if c.get("learned") else "LOSS DID NOT FALL"
        _say(
            f"pretrain [{n_done}/{len(runs)}] {method} seed {seed}: {marker.get('seconds', 0):.0f} s, "
            f"loss {c.get('first_loss')} -> {c.get('last_loss')} ({verdict}) · {_clock(seconds)} elapsed"
        )

    exports = _map(pool, pretrain_one, runs, pretrained)
    models: dict[str, Path] = {f"{m}@seed{seed}": e for (m, seed, *_), e in zip(runs, exports)}
    checks = {
        label: json.loads((root / "pretrain" / label / "done.json").read_text()).get("learning", {}) for label in models
    }
    timings["pretrain_s"] = round(time.time() - t, 1)
    if not args.no_baselines and models:
        t = time.time()
        like = models.get("reclf@seed0") or next(iter(models.values()))
        floor, ceiling = baselines(like, s, synth, root)
        models = {"floor:random": floor, **models, "ceiling:supervised": ceiling}
        timings["baselines_s"] = round(time.time() - t, 1)
        _say(f"floor and ceiling: {_clock(timings['baselines_s'])}")
    t = time.time()
    _say(f"evaluate: {len(models)} models × {len(tasks)} tasks")
    evaluate_all(models, tasks, s, synth, root, pool)
    timings["evaluate_s"] = round(time.time() - t, 1)
    if pool is not None:
        pool.shutdown()
    t = time.time()
    results = find_results([root / "eval"])
    merged = merge_seeds(results)
    by_method: dict[str, dict[str, Any]] = {}
    for label, check in checks.items():
        base = label.split("@seed")[0]
        by_method.setdefault(base, {"learned": True, "ratio": check.get("ratio")})
        by_method[base]["learned"] &= bool(check.get("learned"))
    verdicts = learning_verdicts(merged, by_method)
    recipes = {
        f"{m}@seed{seed}": {
            "preset": demo_preset(m),
            "config": to_dict(demo_config(m, seed, s, synth, root / "pretrain", text_cache)),
        }
        for (m, seed, *_) in runs
    }
    demo_info = {
        "settings": asdict(s),
        "methods": methods,
        "tasks": tasks,
        "jobs": args.jobs,
        "threads": args.threads,
        "text_features": text_info,
        "learning": checks,
        "did_not_learn": {k: v for k, v in verdicts.items() if v},
        "models": {k: str(v) for k, v in models.items()},
        # the recipe of every pretraining run: its shipped preset and the resolved config (as saved
        # beside the run in pretrain/<run>/<time>/config.yaml)
        "recipes": recipes,
        "timings": timings,
    }
    path = write_report(
        results,
        root,
        data=str(synth / "relations"),
        samples=2,
        title="reclf demo on SynthCXR" + (" (quick)" if args.quick else ""),
        demo=demo_info,
    )
    timings["report_s"] = round(time.time() - t, 1)
    timings["total_s"] = round(time.time() - t0, 1)
    atomic_write_json(root / "demo.json", demo_info)
    print()
    for line in summary_rows(merged, verdicts):
        print(line)
    print()
    for label, reasons in verdicts.items():
        if reasons:
            _say(f"DID NOT LEARN: {label}: {'; '.join(reasons)}")
    _say(
        f"report: {path} · total {_clock(timings['total_s'])} ({', '.join(f'{k} {v:.0f}' for k, v in timings.items())})"
    )
    if verdicts and all(verdicts.values()):
        _say("no method learned: see the report and docs/training.md")
        return 3
    return 0
