"""``reclf demo [--quick]``: SynthCXR -> pretrain every method -> every evaluation -> one report.

1. SynthCXR is generated into ``out/synth`` (``out/synth-quick``) unless it is there already.
2. ``convirt``, ``gloria``, ``mgca``, ``reclf``, ``reclf-no-srm`` and ``reclf-no-irm`` pretrain on
   the same data with the same encoders and budget: the shipped preset ``demo_<method>`` (never a
   file of the working folder) plus the demo's budget below, ``seeds`` pretraining seeds each.
3. The floor (random init, same architecture) and the ceiling (supervised on the classification
   labels) are built once.
4. Every model runs every task: zeroshot, linear, segment, retrieve, relations, grounding.
5. ``runs/demo/report.md`` (``runs/demo-quick/``) with tables and figures.

Idempotent and resumable: each finished step leaves a marker (``done.json`` of a pretraining
run, ``baseline.json`` of a baseline, ``results.json`` of an evaluation) and is skipped when the
demo runs again; an interrupted step simply runs again. ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

METHODS = ("convirt", "gloria", "mgca", "reclf", "reclf-no-srm", "reclf-no-irm")


@dataclass
class DemoSettings:
    """Sizes of one demo; ``QUICK`` and ``FULL`` below are the two presets (measured, see docs)."""

    synth_n: int
    synth_per_class: int
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
    method_overrides: dict[str, Any] = field(default_factory=dict)


QUICK = DemoSettings(
    synth_n=400,
    synth_per_class=20,
    image_size=64,
    pretrain_steps=30,
    pretrain_batch=16,
    seeds=1,
    linear_fractions=[0.1, 1.0],
    linear_seeds=[0, 1, 2],
    segment_fractions=[1.0],
    segment_seeds=[0],
    segment_epochs=3,
    segment_min_steps=24,
    segment_task="opacity",
    supervised_epochs=10,
    prompts_per_class=10,
    n_boot=200,
)
FULL = DemoSettings(
    synth_n=2000,
    synth_per_class=60,
    image_size=64,
    pretrain_steps=200,
    pretrain_batch=32,
    seeds=2,
    linear_fractions=[0.01, 0.1, 1.0],
    linear_seeds=[0, 1, 2],
    segment_fractions=[0.1, 1.0],
    segment_seeds=[0],
    segment_epochs=6,
    segment_min_steps=60,
    segment_task="opacity",
    supervised_epochs=20,
    prompts_per_class=20,
    n_boot=500,
)
LOCAL_METHODS = ("gloria", "reclf", "reclf-no-srm", "reclf-no-irm")  # hard_negatives applies to these


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a first look in about 5 minutes (smaller everything)")
    parser.add_argument("--out", default=None, help="demo folder (default runs/demo or runs/demo-quick)")
    parser.add_argument("--synth", default=None, help="SynthCXR folder (default out/synth or out/synth-quick)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list of methods to pretrain")
    parser.add_argument("--seeds", type=int, default=None, help="pretraining seeds per method")
    parser.add_argument("--steps", type=int, default=None, help="pretraining steps per run")
    parser.add_argument("--tasks", default="zeroshot,linear,segment,retrieve,relations,grounding")
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


def ensure_synth(folder: Path, s: DemoSettings) -> Path:
    """Generate SynthCXR into ``folder`` unless a complete one (with manifest.json) is there."""
    if (folder / "manifest.json").is_file():
        _say(f"SynthCXR: using {folder}")
        return folder
    from reclf.data.synthetic.generate import generate

    _say(f"SynthCXR: generating {s.synth_n} pretraining studies ({s.image_size} px) into {folder}")
    t = time.time()
    generate(
        folder,
        n=s.synth_n,
        size=max(s.image_size, 64),
        per_class=s.synth_per_class,
        workers=2,
        overwrite=True,
        preview=False,
    )
    _say(f"SynthCXR: done in {time.time() - t:.0f} s")
    return folder


def demo_preset(method: str) -> str:
    """The name of the shipped preset a demo run of ``method`` starts from."""
    return f"demo_{method}"


def demo_config(method: str, seed: int, s: DemoSettings, synth: Path, runs: Path):
    """The pretraining config of one demo run: the shipped preset ``demo_<method>`` + the demo's budget.

    The preset is read from the installed package by name, so the recipe (method, encoders,
    optimiser) is the same wherever the demo runs; only the budget, the data and output folders and
    the seed are the demo's. A missing preset is an error, never a recipe made up here.
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
    if method in LOCAL_METHODS:
        overrides += [f"method.{k}={v}" for k, v in s.method_overrides.items()]
    return load_config(preset_path(demo_preset(method)), overrides)


def pretrain_one(method: str, seed: int, s: DemoSettings, synth: Path, root: Path) -> Path:
    """Pretrain (or reuse) one method/seed; returns its exported model folder."""
    from reclf.utils.io import atomic_write_json

    marker = root / "pretrain" / f"{method}@seed{seed}" / "done.json"
    if marker.is_file():
        export = Path(json.loads(marker.read_text())["export_dir"])
        if (export / "config.json").is_file():
            _say(f"pretrain {method} seed {seed}: done already ({export})")
            return export
    from reclf.train import pretrain

    cfg = demo_config(method, seed, s, synth, root / "pretrain")
    _say(f"pretrain {method} seed {seed}: {cfg.train.max_steps} steps, batch {cfg.data.batch_size}")
    t = time.time()
    result = pretrain(cfg)
    if result.export_dir is None:
        raise RuntimeError(f"pretraining {method} (seed {seed}) produced no export; see {result.run_dir}")
    atomic_write_json(
        marker,
        {
            "export_dir": str(result.export_dir),
            "run_dir": str(result.run_dir),
            "seconds": round(time.time() - t, 1),
            "summary": result.summary,
        },
    )
    return result.export_dir


def baselines(like: Path, s: DemoSettings, synth: Path, root: Path) -> list[Path]:
    from reclf.evaluate.baselines import BASELINE_FILE, SupervisedConfig, make_random, train_supervised
    from reclf.evaluate.loading import load_model

    model = load_model(like).model
    floor, ceiling = root / "baselines" / "floor-random", root / "baselines" / "ceiling-supervised"
    if not (floor / BASELINE_FILE).is_file():
        _say("floor: random-init model of the same architecture")
        make_random(model, floor, seed=12345)
    if not (ceiling / BASELINE_FILE).is_file():
        _say(f"ceiling: supervised encoder on {synth / 'classification'} ({s.supervised_epochs} epochs)")
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


def _map(pool, fn, items: list[tuple]) -> list[Any]:
    """``fn(*item)`` for every item, in order, in the pool when there is one."""
    if pool is None:
        return [fn(*item) for item in items]
    futures = [pool.submit(fn, *item) for item in items]
    return [f.result() for f in futures]


def evaluate_all(
    models: dict[str, Path], tasks: list[str], s: DemoSettings, synth: Path, root: Path, pool=None
) -> list[Path]:
    items = [(label, path, tasks, s, synth, root) for label, path in models.items()]
    return [out for outs in _map(pool, evaluate_model, items) for out in outs]


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
        _say(f"evaluate {task} · {label}")
        t = time.time()
        run_task(task, loaded, synth / TASK_DATA[task], out, task_opts, str(root / "cache"))
        _say(f"evaluate {task} · {label}: {time.time() - t:.0f} s")
        done.append(out)
    return done


def run(args: argparse.Namespace) -> int:
    import torch

    from reclf.config import to_dict
    from reclf.evaluate.report import write_report
    from reclf.evaluate.results import find_results
    from reclf.utils.io import atomic_write_json

    s = replace(QUICK if args.quick else FULL)
    if args.seeds:
        s.seeds = args.seeds
    if args.steps:
        s.pretrain_steps = args.steps
    root = Path(args.out or ("runs/demo-quick" if args.quick else "runs/demo"))
    synth = Path(args.synth or ("out/synth-quick" if args.quick else "out/synth"))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, args.threads))
    timings: dict[str, float] = {}
    t0 = time.time()
    ensure_synth(synth, s)
    timings["synth_s"] = round(time.time() - t0, 1)
    pool = _pool(args.jobs, args.threads)
    t = time.time()
    runs = [(method, seed, s, synth, root) for method in methods for seed in range(s.seeds)]
    exports = _map(pool, pretrain_one, runs)
    models: dict[str, Path] = {f"{m}@seed{seed}": e for (m, seed, *_), e in zip(runs, exports)}
    timings["pretrain_s"] = round(time.time() - t, 1)
    if not args.no_baselines and models:
        t = time.time()
        like = models.get("reclf@seed0") or next(iter(models.values()))
        floor, ceiling = baselines(like, s, synth, root)
        models = {"floor:random": floor, **models, "ceiling:supervised": ceiling}
        timings["baselines_s"] = round(time.time() - t, 1)
    t = time.time()
    evaluate_all(models, tasks, s, synth, root, pool)
    timings["evaluate_s"] = round(time.time() - t, 1)
    if pool is not None:
        pool.shutdown()
    t = time.time()
    results = find_results([root / "eval"])
    path = write_report(
        results,
        root,
        data=str(synth / "relations"),
        samples=2,
        title="reclf demo on SynthCXR" + (" (quick)" if args.quick else ""),
    )
    timings["report_s"] = round(time.time() - t, 1)
    timings["total_s"] = round(time.time() - t0, 1)
    atomic_write_json(
        root / "demo.json",
        {
            "settings": asdict(s),
            "methods": methods,
            "tasks": tasks,
            "jobs": args.jobs,
            "threads": args.threads,
            "models": {k: str(v) for k, v in models.items()},
            # the recipe of every pretraining run: its shipped preset and the resolved config (as saved
            # beside the run in pretrain/<run>/<time>/config.yaml)
            "recipes": {
                f"{m}@seed{seed}": {
                    "preset": demo_preset(m),
                    "config": to_dict(demo_config(m, seed, s, synth, root / "pretrain")),
                }
                for (m, seed, *_) in runs
            },
            "timings": timings,
        },
    )
    _say(f"report: {path}  (timings: {timings})")
    return 0
