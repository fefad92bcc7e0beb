"""The demo's stages: SynthCXR, the shared text features, pretraining, the floor and ceiling, evaluation.

Each stage is idempotent: a finished step leaves a marker (``reclf.utils.markers``) that records the
fingerprint of the recipe it ran and of the SynthCXR data (``manifest.json``), and is skipped next time
only for the same recipe and data:

- pretraining (``pretrain/<run>/done.json``): a changed recipe is **refused** (:func:`check_recipes`, before
  anything is generated or written) with every changed key and the way on: ``--fresh`` or another ``--out``.
  A run killed before its marker is **resumed** from its ``last.ckpt`` (:func:`unfinished_run`), never
  started over beside its half; a half-run without a checkpoint is removed.
- evaluation (``eval/<task>/<model>/stage.json`` beside ``results.json``): keyed by the task config and the
  model's weights (sha256); a changed one is evaluated again (the result is derived, so it is simply redone).
- baselines (``baseline.json``): built once from the first run's architecture.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from reclf.demo.learning import learning_check
from reclf.demo.settings import DemoSettings, demo_config, eval_config
from reclf.utils.console import clock, quiet, say
from reclf.utils.jobs import map_jobs
from reclf.utils.markers import file_fingerprint, read_marker, refuse_changed, write_marker

#: what a refused demo says to do
CHANGED_HINT = "Pass --fresh to start this demo folder over (SynthCXR is kept), or choose another --out"
PRETRAIN_MARKER = "done.json"
EVAL_MARKER = "stage.json"


def data_fingerprint(synth: Path) -> str | None:
    """The fingerprint of the SynthCXR folder (its ``manifest.json``); ``None`` before it is generated."""
    manifest = synth / "manifest.json"
    return file_fingerprint(manifest) if manifest.is_file() else None


def ensure_synth(folder: Path, s: DemoSettings) -> Path:
    """Generate SynthCXR into ``folder`` unless a complete one (with manifest.json) is there."""
    if (folder / "manifest.json").is_file():
        found = json.loads((folder / "manifest.json").read_text()).get("seed", 0)
        if found != s.synth_seed:
            raise ValueError(
                f"{folder} holds SynthCXR seed {found}, not the asked {s.synth_seed}: pass another --synth folder"
            )
        say(f"SynthCXR: using {folder}")
        return folder
    from reclf.data.synthetic.generate import generate

    t = time.time()
    say(f"SynthCXR: generating {s.synth_n} pretraining studies and the evaluation sets ({s.image_size} px)")
    generate(
        folder,
        n=s.synth_n,
        seed=s.synth_seed,
        size=max(s.image_size, 64),
        per_class=s.synth_per_class,
        classification_n=s.classification_n,
        workers=2,
        overwrite=True,
        preview=False,
    )
    say(f"SynthCXR: {folder} in {clock(time.time() - t)}")
    return folder


def text_features(methods: list[str], s: DemoSettings, synth: Path, root: Path) -> tuple[Path | None, dict]:
    """Encode every report of the pretraining, retrieval and relations sets once with the demo's frozen
    text encoder (the same for every method, checked here) into one file that every run reads."""
    from reclf.config import to_dict
    from reclf.train.text_cache import build_text_cache, corpus_reports, needs_cls_attention, shared_cache_file

    cfgs = [demo_config(m, 0, s, synth, root) for m in methods]
    text = cfgs[0].text_encoder
    if any(to_dict(c.text_encoder) != to_dict(text) for c in cfgs):
        raise ValueError("the demo presets disagree on text_encoder; every demo method must share one text side")
    if not text.freeze:
        return None, {"frozen": False}
    path = shared_cache_file(root / "cache", text)
    reports = corpus_reports([synth / n for n in ("pretrain", "retrieval_8x200", "relations")], text.sections)
    reports += binding_negative_reports(cfgs, reports)
    import torch

    t = time.time()
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # the stage runs alone: every core
    try:
        with quiet(root / "logs" / "text-features.log"):
            # MGCA's word weights are the [CLS] attention: keep it only when an MGCA-like run needs it
            need_attention = needs_cls_attention([c.method for c in cfgs])
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
    say(
        f"text features: {result.reports} reports by the frozen {text.name} "
        f"({result.encoded} encoded now) in {clock(time.time() - t)}; "
        f"{100 * info['truncated_share']:.1f} % longer than {text.max_tokens} tokens (their tail is cut)"
    )
    return path, info


def binding_negative_reports(cfgs: list, reports: list[str]) -> list[str]:
    """The swapped reports that runs with ``method.binding_negatives`` will encode (so they are cached too).

    The setting is read from the resolved method (its registry preset plus the config's overrides), not
    from the config section alone: RECLF's presets switch it on without the YAML naming it."""
    from reclf.data.reports import swap_laterality
    from reclf.methods.params import method_params

    modes = {method_params(**c.method).binding_negatives for c in cfgs} - {"none"}
    swapped = {swap_laterality(r, zones=m == "side+zone") for m in modes for r in reports}
    return sorted(swapped - set(reports))


def run_label(method: str, seed: int) -> str:
    return f"{method}@seed{seed}"


def check_recipes(runs: list[tuple[str, int]], s: DemoSettings, synth: Path, root: Path) -> None:
    """Refuse, before anything is generated or trained, when a finished or half-finished pretraining run in
    ``root`` ran another recipe than the one asked now (the error names every changed key and the way on)."""
    from reclf.config import recipe

    for method, seed in runs:
        label = run_label(method, seed)
        asked = recipe(demo_config(method, seed, s, synth, root / "pretrain"))
        marker = read_marker(root / "pretrain" / label / PRETRAIN_MARKER, asked, check_data=False)
        if marker is not None:
            refuse_changed(marker, f"pretraining {label}", CHANGED_HINT)
        else:
            unfinished_run(root / "pretrain" / label, asked, remove_empty=False)


def unfinished_run(folder: Path, asked: dict, remove_empty: bool = True) -> tuple[Path, int] | None:
    """The run folder under ``folder`` that a killed demo left (a ``last.ckpt``, no ``summary.json``) and its
    step, to resume; ``None`` when there is none. A half-run of another recipe is refused (as a finished one
    is); half-runs without a checkpoint (killed before their first) hold nothing to resume and are removed
    (``remove_empty=False``: the check alone, nothing removed or loaded: the step is then -1)."""
    import shutil

    from reclf.config import load_yaml, recipe
    from reclf.utils.markers import Marker, changed_keys

    found: tuple[Path, int] | None = None
    runs = sorted((d for d in folder.glob("*") if (d / "config.yaml").is_file()), key=lambda d: d.name, reverse=True)
    for run_dir in runs:
        if (run_dir / "summary.json").is_file():
            continue  # finished (or failed and said so): not a half-run
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            if remove_empty:
                say(f"pretrain: removing {run_dir} (killed before its first checkpoint: nothing to resume)")
                shutil.rmtree(run_dir, ignore_errors=True)
            continue
        changed = changed_keys(recipe(load_yaml(run_dir / "config.yaml")), asked)
        refuse_changed(Marker(run_dir / "config.yaml", {}, changed), f"the unfinished pretraining run {run_dir}",
                       CHANGED_HINT)
        if found is None:
            found = (run_dir, checkpoint_step(ckpt) if remove_empty else -1)
    return found


def checkpoint_step(ckpt: Path) -> int:
    """The optimiser step a training checkpoint was written at."""
    from reclf.train.runs import load_checkpoint

    return int(load_checkpoint(ckpt).get("global_step", 0))


def pretrain_one(
    method: str, seed: int, s: DemoSettings, synth: Path, root: Path, text_cache: Path | None = None
) -> Path:
    """Pretrain one method/seed, resume its killed run, or reuse its finished one (same recipe and data only);
    returns its exported model folder."""
    from reclf.config import recipe

    label = run_label(method, seed)
    folder = root / "pretrain" / label
    cfg = demo_config(method, seed, s, synth, root / "pretrain", text_cache)
    asked, data = recipe(cfg), data_fingerprint(synth)
    marker = read_marker(folder / PRETRAIN_MARKER, asked, data)
    if marker is not None:
        refuse_changed(marker, f"pretraining {label}", CHANGED_HINT)
        export = Path(marker.payload["export_dir"])
        if (export / "config.json").is_file():
            return export
    from reclf.train import pretrain

    resume = unfinished_run(folder, asked)
    if resume is not None:
        cfg.train.resume = str(resume[0])
        say(f"pretrain: resuming {label} from step {resume[1]} ({resume[0]})")
    t = time.time()
    with quiet(root / "logs" / f"pretrain-{label}.log"):
        result = pretrain(cfg)
    if result.export_dir is None or result.run_dir is None:
        raise RuntimeError(f"pretraining {method} (seed {seed}) produced no export; see {result.run_dir}")
    write_marker(
        folder / PRETRAIN_MARKER,
        "pretrain",
        asked,
        data,
        export_dir=str(result.export_dir),
        run_dir=str(result.run_dir),
        seconds=round(time.time() - t, 1),
        resumed_from_step=resume[1] if resume else None,
        learning=learning_check(result.run_dir),
        summary=result.summary,
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


def evaluate_all(
    models: dict[str, Path], tasks: list[str], s: DemoSettings, synth: Path, root: Path, pool=None
) -> list[Path]:
    items = [(label, path, tasks, s, synth, root) for label, path in models.items()]
    labels = list(models)

    def done(i: int, outs: list[Path], seconds: float, n_done: int) -> None:
        say(f"evaluate [{n_done}/{len(items)}] {labels[i]}: {len(outs)} tasks · {clock(seconds)} elapsed")

    return [out for outs in map_jobs(pool, evaluate_model, items, done) for out in outs]


def model_sha256(path: Path) -> str | None:
    """The sha256 of a model's weights (``model.safetensors`` of a folder, or the file); ``None`` if absent."""
    from reclf.utils.io import file_sha256

    weights = path / "model.safetensors" if path.is_dir() else path
    return file_sha256(weights) if weights.is_file() else None


def eval_stage(task: str, cfg, model: Path) -> dict:
    """What an evaluation's marker keys on: the task, its resolved config and the weights evaluated."""
    from reclf.config import to_dict

    return {"task": task, "config": to_dict(cfg), "model_sha256": model_sha256(model)}


def evaluate_model(label: str, path: Path, tasks: list[str], s: DemoSettings, synth: Path, root: Path) -> list[Path]:
    """Every task for one model; a task whose results.json ran this config on these weights and data is skipped."""
    from reclf.evaluate.loading import load_model
    from reclf.evaluate.tasks import task_spec

    done: list[Path] = []
    data = data_fingerprint(synth)
    loaded = None
    for task in tasks:
        spec = task_spec(task)
        if label.startswith("ceiling") and spec.needs_text:
            continue  # the supervised ceiling has no trained text side
        cfg = eval_config(task, s, root / "cache")
        stage = eval_stage(task, cfg, path)
        out = root / "eval" / task / label.replace(":", "-")
        marker = read_marker(out / EVAL_MARKER, stage, data)
        if marker is not None and marker.matches and (out / "results.json").is_file():
            done.append(out)
            continue
        with quiet(root / "logs" / f"evaluate-{label.replace(':', '-')}.log"):
            if loaded is None:
                loaded = load_model(path)
                loaded.label = label
            t = time.time()
            if marker is not None:
                print(f"== {task} · {label}: evaluated again ({'; '.join(marker.changed[:4])})", flush=True)
            print(f"== {task} · {label}", flush=True)
            spec.run(loaded, synth / spec.synth_set, out, cfg)
            print(f"== {task} · {label}: {time.time() - t:.0f} s", flush=True)
        write_marker(out / EVAL_MARKER, "evaluate", stage, data)
        done.append(out)
    return done
