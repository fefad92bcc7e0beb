"""The demo's stages: SynthCXR, the shared text features, pretraining, the floor and ceiling, evaluation.

Each stage is idempotent: a finished step leaves a marker (``done.json`` of a pretraining run,
``baseline.json`` of a baseline, ``results.json`` of an evaluation) and is skipped next time.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from reclf.demo.learning import learning_check
from reclf.demo.settings import IMAGE_ONLY, TASK_DATA, DemoSettings, demo_config
from reclf.utils.console import clock, quiet, say
from reclf.utils.jobs import map_jobs


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
    if result.export_dir is None or result.run_dir is None:
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


def evaluate_all(
    models: dict[str, Path], tasks: list[str], s: DemoSettings, synth: Path, root: Path, pool=None
) -> list[Path]:
    items = [(label, path, tasks, s, synth, root) for label, path in models.items()]
    labels = list(models)

    def done(i: int, outs: list[Path], seconds: float, n_done: int) -> None:
        say(f"evaluate [{n_done}/{len(items)}] {labels[i]}: {len(outs)} tasks · {clock(seconds)} elapsed")

    return [out for outs in map_jobs(pool, evaluate_model, items, done) for out in outs]


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
