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
   phrase-grounding, diagnostics.
6. ``runs/demo/report.md`` (``runs/demo-quick/``) with tables, paired differences, loss curves and
   figures; a method whose zero-shot interval contains chance or whose linear probe is not above
   the floor is marked **did not learn**, and the demo exits non-zero when no method learned.

The console shows one line per stage (progress and time) and the summary table at the end; what
Lightning and the tasks print goes to ``<out>/logs/``.

Every config is resolved first (the pretraining recipes with ``--set``, the task configs with
``--eval-set TASK.key=value``): an unknown key stops the demo (exit 2) before anything is generated.

Idempotent and resumable: each finished step leaves a marker keyed by the fingerprint of its recipe
and of the SynthCXR data (``reclf.demo.stages``) and is skipped when the demo runs again with the same
recipe. A demo folder whose runs were trained with another recipe (``--steps 30``, then ``--steps 400``)
is refused, naming what changed: ``--fresh`` starts over, another ``--out`` keeps both. A pretraining
run killed midway is resumed from its last checkpoint; the report says which runs were resumed and
from which step. A task config that changed is evaluated again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from reclf.demo.learning import learning_verdicts
from reclf.demo.settings import FULL, METHODS, QUICK, TASKS, demo_config, demo_preset, eval_config
from reclf.demo.stages import (
    PRETRAIN_MARKER,
    baselines,
    check_recipes,
    ensure_synth,
    evaluate_all,
    pretrain_one,
    run_label,
    text_features,
)
from reclf.utils.console import clock, say
from reclf.utils.jobs import make_pool, map_jobs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a first look in about ten minutes (RECLF and ConVIRT, smaller data and evaluation sets, 500 steps)",
    )
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
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a pretraining config override for every run (repeatable), e.g. --set method.node_where=false: "
        "ablations with the demo's own recipe; use another --out",
    )
    parser.add_argument(
        "--eval-set",
        dest="eval_overrides",
        action="append",
        default=[],
        metavar="TASK.KEY=VALUE",
        help="a field of one task's config (repeatable), e.g. --eval-set zeroshot.prompts_per_class=5 "
        "(docs/evaluation.md lists the fields)",
    )
    parser.add_argument(
        "--synth-seed", type=int, default=0, help="SynthCXR seed (0: the reported numbers; choose designs on another)"
    )
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


def run(args: argparse.Namespace) -> int:
    import torch

    from reclf.config import ConfigError, config_fingerprint
    from reclf.evaluate.report import merge_seeds, summary_rows, write_report
    from reclf.evaluate.results import find_results
    from reclf.evaluate.tasks import task_spec
    from reclf.utils.io import atomic_write_json

    s = replace(QUICK if args.quick else FULL)
    if args.seeds:
        s.seeds = args.seeds
    if args.steps:
        s.pretrain_steps = args.steps
    s.synth_seed = args.synth_seed
    s.overrides = list(args.overrides)
    s.eval_overrides = list(getattr(args, "eval_overrides", []) or [])
    for item in s.overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set method.node_where=false")
    root = Path(args.out or ("runs/demo-quick" if args.quick else "runs/demo"))
    default_synth = "out/synth-quick" if args.quick else "out/synth"
    if s.synth_seed:
        default_synth += f"-seed{s.synth_seed}"
    synth = Path(args.synth or default_synth)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else list(s.methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for task in tasks:
        task_spec(task)  # an unknown task: the error names the nearest registered one
    # every config before any work: an unknown key or a bad value stops here, with nothing generated or written
    pretrain_runs = [(m, seed) for m in methods for seed in range(s.seeds)]
    for method, seed in pretrain_runs:
        demo_config(method, seed, s, synth, root / "pretrain")
    for task in TASKS:
        eval_config(task, s, root / "cache")  # every task, so that a --eval-set of a task not run is checked too
    if args.fresh and root.exists():
        shutil.rmtree(root)
    check_recipes(pretrain_runs, s, synth, root)  # a changed recipe is refused before anything is trained
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, args.threads))
    timings: dict[str, float] = {}
    t0 = time.time()
    say(
        f"{len(methods)} methods × {s.seeds} seed(s), {s.pretrain_steps} steps of batch {s.pretrain_batch}; "
        f"logs in {root / 'logs'}"
    )
    ensure_synth(synth, s)
    timings["synth_s"] = round(time.time() - t0, 1)
    t = time.time()
    text_cache, text_info = text_features(methods, s, synth, root)
    timings["text_features_s"] = round(time.time() - t, 1)
    pool = make_pool(args.jobs, args.threads)
    t = time.time()
    # the slowest runs (all-pairs local matching) first, so that two workers finish close together
    order = sorted(methods, key=lambda m: (m not in ("reclf", "reclf-no-irm", "reclf-no-srm"), m != "gloria"))
    runs = [(method, seed, s, synth, root, text_cache) for method in order for seed in range(s.seeds)]
    say(f"pretrain: {len(runs)} runs, {min(args.jobs, len(runs))} at a time")

    def marker_of(label: str) -> dict[str, Any]:
        return json.loads((root / "pretrain" / label / PRETRAIN_MARKER).read_text())

    def pretrained(i: int, export: Path, seconds: float, n_done: int) -> None:
        method, seed = runs[i][:2]
        marker = marker_of(run_label(method, seed))
        c = marker.get("learning", {})
        verdict = "loss fell" if c.get("learned") else "LOSS DID NOT FALL"
        resumed = marker.get("resumed_from_step")
        say(
            f"pretrain [{n_done}/{len(runs)}] {method} seed {seed}: {marker.get('seconds', 0):.0f} s"
            + (f" (resumed from step {resumed})" if resumed is not None else "")
            + f", loss {c.get('first_loss')} -> {c.get('last_loss')} ({verdict}) · {clock(seconds)} elapsed"
        )

    exports = map_jobs(pool, pretrain_one, runs, pretrained)
    models: dict[str, Path] = {run_label(m, seed): e for (m, seed, *_), e in zip(runs, exports)}
    markers = {label: marker_of(label) for label in models}
    checks = {label: marker.get("learning", {}) for label, marker in markers.items()}
    # the recipe each run was trained with, as its marker recorded it (the same as asked: a changed one is refused)
    recipes = {
        label: {
            "preset": demo_preset(label.split("@seed")[0]),
            "config": marker["config"],
            "config_fingerprint": marker.get("config_fingerprint") or config_fingerprint(marker["config"]),
        }
        for label, marker in markers.items()
    }
    resumed = {label: m["resumed_from_step"] for label, m in markers.items() if m.get("resumed_from_step") is not None}
    timings["pretrain_s"] = round(time.time() - t, 1)
    if not args.no_baselines and models:
        t = time.time()
        like = models.get("reclf@seed0") or next(iter(models.values()))
        floor, ceiling = baselines(like, s, synth, root)
        models = {"floor:random": floor, **models, "ceiling:supervised": ceiling}
        timings["baselines_s"] = round(time.time() - t, 1)
        say(f"floor and ceiling: {clock(timings['baselines_s'])}")
    t = time.time()
    say(f"evaluate: {len(models)} models × {len(tasks)} tasks")
    evaluate_all(models, tasks, s, synth, root, pool)
    timings["evaluate_s"] = round(time.time() - t, 1)
    if pool is not None:
        pool.shutdown()
    t = time.time()
    # the numbers of this demo's models only (an earlier demo into this folder may have evaluated others)
    results = [r for r in find_results([root / "eval"]) if r["model"].get("label") in models]
    merged = merge_seeds(results)
    by_method: dict[str, dict[str, Any]] = {}
    for label, check in checks.items():
        base = label.split("@seed")[0]
        by_method.setdefault(base, {"learned": True, "ratio": check.get("ratio")})
        by_method[base]["learned"] &= bool(check.get("learned"))
    verdicts = learning_verdicts(merged, by_method)
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
        # the recipe of every pretraining run: its shipped preset and the resolved config it was trained with
        # (its marker's; as saved beside the run in pretrain/<run>/<time>/config.yaml) and that config's fingerprint
        "recipes": recipes,
        "resumed": resumed,  # run -> the step its killed run was resumed from
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
            say(f"DID NOT LEARN: {label}: {'; '.join(reasons)}")
    say(f"report: {path} · total {clock(timings['total_s'])} ({', '.join(f'{k} {v:.0f}' for k, v in timings.items())})")
    if verdicts and all(verdicts.values()):
        say("no method learned: see the report and docs/training.md")
        return 3
    return 0
