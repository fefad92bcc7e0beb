"""``reclf tune PRESET ... --grid KEY=V1,V2,...``: the same hyper-parameter grid for every method.

Tuning alone moves a baseline by several points (BenchX: about 5 AUROC for ConVIRT), so a comparison
means something only when every method gets the same tuning budget. This command gives it to them:
every preset is trained at every point of the grid (the Cartesian product of the ``--grid`` options,
e.g. the heads' rate ``train.lr`` x the image encoder's ``train.lr_image``) with the same data, seed and
budget, and per method the point with the best **validation criterion** is chosen.

The criterion (``--criterion``, default ``val/acc1``) is one number that means the same for every method:
in-batch image<->report retrieval accuracy on the pretraining table's valid split, scored with the
method's own inference rule (``model.similarity``), the best over the run's validations. The total
validation loss is a poor criterion for a multi-term loss: MGCA's is dominated by its token and prototype
terms, and the lowest total loss seen in its tuning scored near the bottom on zero-shot (docs/training.md,
Tuning). ``val/loss`` (lower is better) and any other logged ``val/`` metric can be chosen instead; the
table shows the criterion beside the loss. The valid split only, never a test set.

Output under ``--out`` (default ``runs/tune``): one pretraining run per (preset, point), a marker
``trial.json`` beside each (a stage marker, ``reclf.utils.markers``, keyed by the fingerprints of the
trial's recipe and of the pretraining table: a finished trial is skipped when the command runs again
with the same recipe and data, so tuning is resumable; a marker of another recipe or data is refused,
naming what changed, never reused),
and ``tuning.json`` + ``tuning.md`` with every trial and the chosen point per preset. A trial that
fails (a NaN loss, bad data) is recorded as failed and never chosen; the others go on.

A frozen text encoder (the demo presets) is run once over the pretraining reports into a shared
feature file (``reclf.train.text_cache``), as the demo does, unless ``text_encoder.cache_file`` is set.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from reclf.utils.console import clock, quiet, say
from reclf.utils.io import atomic_write_json, atomic_write_text
from reclf.utils.jobs import make_pool, map_jobs

TRIAL_FILE = "trial.json"
DEFAULT_CRITERION = "val/acc1"


def lower_is_better(metric: str) -> bool:
    """Losses are minimised; accuracies, AUROCs and the like are maximised."""
    name = metric.rsplit("/", 1)[-1]
    return name == "loss" or name.endswith("loss") or name in ("global", "local", "token", "proto", "binding")


def best_logged(run_dir: str | Path | None, metric: str) -> tuple[float | None, int | None]:
    """The best value of ``metric`` over a run's validations (``metrics.csv``) and its step; (None, None)
    when the run never logged it. Non-finite values are skipped."""
    import csv

    path = Path(run_dir) / "metrics.csv" if run_dir else None
    if path is None or not path.is_file():
        return None, None
    best: tuple[float | None, int | None] = (None, None)
    low = lower_is_better(metric)
    with open(path, newline="") as fh:
        for row in csv.reader(fh):
            if len(row) != 4 or row[2] != metric:
                continue
            try:
                value, step = float(row[3]), int(row[0])
            except ValueError:
                continue
            if math.isfinite(value) and (best[0] is None or (value < best[0] if low else value > best[0])):
                best = (value, step)
    return best


@dataclass
class Trial:
    """One (preset, grid point) run and its validation score."""

    preset: str
    point: dict[str, str]  # the grid's key=value overrides of this trial
    status: str  # completed | failed: WHY
    best_val_loss: float | None  # lowest val/loss over the run's validations (None: never validated)
    best_step: int | None
    steps: int | None
    seconds: float
    run_dir: str | None = None
    export_dir: str | None = None
    config: dict[str, Any] | None = None  # the recipe it ran (reclf.config.recipe; a marker is reused only for it)

    def score(self, criterion: str) -> float | None:
        """The best value of ``criterion`` over the run's validations (read from its ``metrics.csv``)."""
        if criterion == "val/loss":
            return self.best_val_loss
        return best_logged(self.run_dir, criterion)[0]

    def usable_score(self, criterion: str) -> float | None:
        """The score of a completed run with a finite ``criterion``; ``None`` for a run that cannot be chosen."""
        value = self.score(criterion) if self.status == "completed" else None
        return value if value is not None and math.isfinite(value) else None

    def usable_for(self, criterion: str) -> bool:
        return self.usable_score(criterion) is not None

    @property
    def usable(self) -> bool:
        return self.status == "completed" and self.best_val_loss is not None and math.isfinite(self.best_val_loss)


@dataclass
class Tuning:
    """Every trial of every preset, and the chosen point per preset."""

    grid: dict[str, list[str]]
    overrides: list[str]
    seed: int
    trials: list[Trial] = field(default_factory=list)
    criterion: str = DEFAULT_CRITERION

    def chosen(self) -> dict[str, Trial | None]:
        """Per preset, the usable trial with the best criterion (ties: the earlier grid point)."""
        low = lower_is_better(self.criterion)
        out: dict[str, Trial | None] = {}
        held: dict[str, float] = {}  # the chosen trial's score per preset: each metrics.csv is read once
        for t in self.trials:
            out.setdefault(t.preset, None)
            value = t.usable_score(self.criterion)
            if value is None:
                continue
            best = held.get(t.preset)
            if best is None or (value < best if low else value > best):
                out[t.preset], held[t.preset] = t, value
        return out

    def to_dict(self) -> dict[str, Any]:
        chosen = self.chosen()
        direction = "lowest" if lower_is_better(self.criterion) else "highest"
        return {
            "criterion": f"{direction} {self.criterion} over the run's validations (the pretraining valid split)",
            "criterion_key": self.criterion,
            "scores": [t.score(self.criterion) for t in self.trials],
            "grid": self.grid,
            "overrides": self.overrides,
            "seed": self.seed,
            "chosen": {p: (t.point if t else None) for p, t in chosen.items()},
            "trials": [asdict(t) for t in self.trials],
        }


def parse_grid(options: list[str]) -> dict[str, list[str]]:
    """``["train.lr=3e-4,1e-3", "method.d_z=32,64"]`` -> ``{"train.lr": ["3e-4", "1e-3"], ...}``."""
    grid: dict[str, list[str]] = {}
    for opt in options:
        key, sep, values = opt.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not vals:
            raise ValueError(f"--grid {opt!r}: expected KEY=V1,V2,... (e.g. train.lr=3e-4,1e-3,3e-3)")
        if key.strip() in grid:
            raise ValueError(f"--grid: {key.strip()!r} is given twice")
        grid[key.strip()] = vals
    if not grid:
        raise ValueError("give at least one --grid KEY=V1,V2,...")
    return grid


def grid_points(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """The Cartesian product of the grid, in the order the values were given."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def point_name(point: dict[str, str]) -> str:
    """A folder name for a grid point: ``{"train.lr": "3e-4"} -> "lr=3e-4"``."""
    parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items()]
    return re.sub(r"[^A-Za-z0-9=.,+-]", "_", ",".join(parts))


def trial_dir(preset: str, point: dict[str, str], root: Path) -> Path:
    """The folder of one trial: its pretraining run(s) and its ``trial.json`` marker."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset)
    return root / safe / point_name(point)


def trial_config(preset: str, point: dict[str, str], overrides: list[str], seed: int, root: Path):
    """The config of one trial: the preset, the common overrides, then the grid point (the point wins)."""
    from reclf.config import load_config

    folder = trial_dir(preset, point, root)
    return load_config(
        preset,
        [
            *overrides,
            *(f"{k}={v}" for k, v in point.items()),
            f"seed={seed}",
            f"name={folder.name}",
            f"train.runs_dir={folder.parent}",
            "train.progress=false",
        ],
    )


def data_fingerprint(cfg) -> str | None:
    """The fingerprint of the pretraining table a trial reads (``None`` when there is none yet)."""
    from reclf.data.studies import table_path
    from reclf.utils.markers import file_fingerprint

    try:
        return file_fingerprint(table_path(cfg.data.root))
    except (OSError, ValueError):
        return None


def finished_trial(preset: str, point: dict[str, str], overrides: list[str], seed: int, root: Path) -> Trial | None:
    """The trial of ``trial.json`` when it ran this very recipe on this data (``reclf.utils.markers``); ``None``
    when it has not run. A marker of another recipe or data is an error naming what changed, never reused."""
    from reclf.config import recipe
    from reclf.utils.markers import read_marker, refuse_changed

    cfg = trial_config(preset, point, overrides, seed, root)
    marker = read_marker(trial_dir(preset, point, root) / TRIAL_FILE, recipe(cfg), data_fingerprint(cfg))
    if marker is None:
        return None
    refuse_changed(marker, f"the trial {marker.path.parent}",
                   f"Choose another --out, or delete {marker.path.parent} to run it again")
    names = {f.name for f in fields(Trial)}
    return Trial(**{k: v for k, v in marker.payload.items() if k in names}, config=recipe(cfg))


def run_trial(preset: str, point: dict[str, str], overrides: list[str], seed: int, root: Path) -> Trial:
    """Train one trial (or read its marker); a failure is recorded, not raised."""
    done = finished_trial(preset, point, overrides, seed, root)
    if done is not None:
        return done
    from reclf.config import recipe
    from reclf.train import pretrain
    from reclf.utils.markers import write_marker

    cfg = trial_config(preset, point, overrides, seed, root)
    folder = trial_dir(preset, point, root)
    start = time.time()
    log = root / "logs" / f"{folder.parent.name}-{folder.name}.log"
    try:
        with quiet(log):
            result = pretrain(cfg)
        best = result.summary.get("best", {})
        value = best.get("value")
        trial = Trial(
            preset,
            point,
            "completed",
            None if value is None else float(value),
            best.get("step"),
            result.summary.get("steps"),
            round(time.time() - start, 1),
            str(result.run_dir),
            str(result.export_dir) if result.export_dir else None,
            recipe(cfg),
        )
    except Exception as exc:  # noqa: BLE001 - one failed trial must not end the tuning of the others
        trial = Trial(
            preset,
            point,
            f"failed: {type(exc).__name__}: {exc} (log: {log})",
            None,
            None,
            None,
            round(time.time() - start, 1),
            config=recipe(cfg),
        )
    record = {k: v for k, v in asdict(trial).items() if k != "config"}  # the marker holds the config itself
    write_marker(folder / TRIAL_FILE, "tune-trial", recipe(cfg), data_fingerprint(cfg), **record)
    return trial


def shared_text_cache(presets: list[str], overrides: list[str], root: Path) -> list[str]:
    """When every preset shares one frozen text encoder (without a ``cache_file``) and one data root: encode
    the pretraining reports once into a file every trial reads; returns the override naming it (else none)."""
    from reclf.config import load_config, to_dict
    from reclf.train.text_cache import build_text_cache, corpus_reports, needs_cls_attention, shared_cache_file

    cfgs = [load_config(p, overrides) for p in presets]
    texts = {json.dumps(to_dict(c.text_encoder), sort_keys=True) for c in cfgs}
    roots = {str(c.data.root) for c in cfgs}
    text = cfgs[0].text_encoder
    if len(texts) != 1 or len(roots) != 1 or not text.freeze or text.cache_file:
        return []  # nothing shared to precompute: each run encodes its own text
    path = shared_cache_file(root / "cache", text)
    need_attention = needs_cls_attention([c.method for c in cfgs])
    t = time.time()
    with quiet(root / "logs" / "text-features.log"):
        result = build_text_cache(
            text, corpus_reports([cfgs[0].data.root], text.sections), path, cls_attention=need_attention
        )
    say(f"text features: {result.reports} reports ({result.encoded} encoded now) in {clock(time.time() - t)}", "tune")
    return [f"text_encoder.cache_file={path}"]


def render_markdown(tuning: Tuning) -> str:
    """``tuning.md``: one row per trial, the chosen point per preset marked."""
    chosen = tuning.chosen()
    keys = list(tuning.grid)
    grid = ", ".join(f"`{k}` in {{{', '.join(v)}}}" for k, v in tuning.grid.items())
    common = ", ".join(f"`{o}`" for o in tuning.overrides) or "none"
    crit = tuning.criterion
    direction = "lowest" if lower_is_better(crit) else "highest"
    lines = [
        "# Tuning",
        "",
        f"Grid: {grid}; seed {tuning.seed}; common overrides: {common}.",
        f"Chosen per preset: the {direction} `{crit}` over the run's validations (the pretraining table's valid "
        "split). The total val/loss is shown beside it; losses of different methods are not on one scale.",
        "",
        "| preset | " + " | ".join(keys) + f" | best {crit} | at step | best val/loss | steps | time | status |",
        "|---|" + "---|" * len(keys) + "---|---|---|---|---|---|",
    ]
    for t in tuning.trials:
        mark = " **chosen**" if chosen.get(t.preset) is t else ""
        loss = f"{t.best_val_loss:.4f}" if t.best_val_loss is not None else "—"
        value, step = (t.best_val_loss, t.best_step) if crit == "val/loss" else best_logged(t.run_dir, crit)
        score = f"{value:.4f}" if value is not None else "—"
        lines.append(
            f"| {t.preset} | "
            + " | ".join(t.point[k] for k in keys)
            + f" | {score}{mark} | {step if step is not None else '—'} | {loss} | {t.steps or '—'} "
            f"| {clock(t.seconds)} | {t.status} |"
        )
    return "\n".join(lines) + "\n"


def tune(
    presets: list[str],
    grid: dict[str, list[str]],
    overrides: list[str] | None = None,
    out: str | Path = "runs/tune",
    seed: int = 0,
    jobs: int = 1,
    threads: int = 1,
    criterion: str = DEFAULT_CRITERION,
) -> Tuning:
    """Every preset at every grid point; writes ``tuning.json`` and ``tuning.md`` under ``out``."""
    root = Path(out)
    overrides = list(overrides or [])
    if not criterion.startswith("val/"):
        raise ValueError(f"--criterion {criterion!r}: choose a validation metric (val/acc1, val/loss, val/global, ...)")
    for p in presets:  # every config is valid before anything is trained
        for point in grid_points(grid):
            trial_config(p, point, overrides, seed, root)
    root.mkdir(parents=True, exist_ok=True)
    shared = overrides + shared_text_cache(presets, overrides, root)
    items = [(p, point, shared, seed, root) for p in presets for point in grid_points(grid)]
    for item in items:  # a finished trial of another config stops the tuning before anything is trained
        finished_trial(*item)
    say(
        f"{len(presets)} preset(s) × {len(items) // len(presets)} grid point(s), {min(jobs, len(items))} at a time; "
        f"logs in {root / 'logs'}",
        "tune",
    )

    def done(i: int, trial: Trial, seconds: float, n_done: int) -> None:
        value = trial.score(criterion) if trial.status == "completed" else None
        shown = f"{value:.4f}" if value is not None else "—"
        say(
            f"[{n_done}/{len(items)}] {trial.preset} {point_name(trial.point)}: best {criterion} {shown} "
            f"({trial.status.split(':')[0]}) · {clock(seconds)} elapsed",
            "tune",
        )

    pool = make_pool(jobs, threads)
    try:
        trials = map_jobs(pool, run_trial, items, done)
    finally:
        if pool is not None:
            pool.shutdown()
    tuning = Tuning(grid, overrides, seed, trials, criterion)
    atomic_write_json(root / "tuning.json", tuning.to_dict())
    atomic_write_text(root / "tuning.md", render_markdown(tuning))
    return tuning


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("presets", nargs="+", help="shipped preset names (reclf presets) or YAML files, one per method")
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a config key and its values (repeat for a product grid), e.g. train.lr=3e-4,1e-3,3e-3",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="an override for every trial (data.root, train.max_steps, ...); repeatable",
    )
    parser.add_argument("--out", default="runs/tune", help="output folder (default runs/tune)")
    parser.add_argument(
        "--criterion",
        default=DEFAULT_CRITERION,
        help="the validation metric that chooses a trial (default val/acc1: in-batch retrieval accuracy with the "
        "method's own score; val/loss is minimised, accuracies maximised)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the seed of every trial (default 0)")
    parser.add_argument("--jobs", type=int, default=1, help="trials at once, one process each (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial (default 1)")


def run(args: argparse.Namespace) -> int:
    grid = parse_grid(args.grid)
    tuning = tune(args.presets, grid, args.overrides, args.out, args.seed, args.jobs, args.threads, args.criterion)
    print(render_markdown(tuning))
    failed = [t for t in tuning.trials if not t.usable_for(tuning.criterion)]
    for preset, t in tuning.chosen().items():
        say(f"{preset}: " + (f"chosen {point_name(t.point)}" if t else "no usable trial"), "tune")
    say(f"{Path(args.out) / 'tuning.md'}; {len(failed)} of {len(tuning.trials)} trials without a usable score", "tune")
    return 0 if all(tuning.chosen().values()) else 1


__all__ = [
    "DEFAULT_CRITERION",
    "Trial",
    "Tuning",
    "add_arguments",
    "best_logged",
    "grid_points",
    "lower_is_better",
    "parse_grid",
    "point_name",
    "run",
    "tune",
]
