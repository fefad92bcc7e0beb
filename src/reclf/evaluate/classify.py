"""``reclf classify --model DIR --images FOLDER (--classes "a,b,c" | --prompts FILE) --out preds.csv
[--labels CSV]``: zero-shot class scores of your own radiographs.

The same code as ``reclf evaluate zeroshot`` (``reclf.evaluate.tasks.zeroshot``): the images go through the
model's evaluation transform, each class's prompts come from a prompt file (``--prompts``, or for
``--classes`` the built-in file that has every class: CheXpert's wording first, then SynthCXR's; with
``--prompts-per-class K`` drawn with seed ``seed + class index``), every prompt is scored by every rule
of the model and a class's score is the mean (``--reduce max``: the max) over its prompts. Classes are
sorted by name, as zeroshot sorts them, so both draw the same prompts. Classes that no built-in prompt
file has are scored with their own name as the one prompt (said on the console and in the output).

``preds.csv`` has one row per file of the folder: ``image`` (path relative to the folder), ``prediction``
(the best class by ``--score``, default ``method``: the model's own score), ``score:<class>`` and ``error``
(why an unreadable file was skipped; such rows have no scores). With ``--labels CSV`` (columns ``image``
and ``class``) it also reports accuracy and macro F1, as zeroshot computes them, and the one-vs-rest macro
AUROC, each with its 95 % bootstrap interval, over the labelled files in the labels' order, and writes
them to ``<preds>.results.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from reclf.evaluate.embed import ImageList, list_folder, print_bad
from reclf.evaluate.loading import LoadedModel
from reclf.evaluate.stats import Estimate
from reclf.evaluate.tasks.zeroshot import ZeroShotConfig

LABEL_IMAGE_COLUMNS = ("image", "image_path", "path", "file", "id")
LABEL_CLASS_COLUMNS = ("class", "label")


def class_prompts(classes: list[str] | None, prompts: str | None, per_class: int | None, seed: int
                  ) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """``({class: prompts}, description)`` by zeroshot's rules (see the module docstring); classes sorted."""
    from reclf.data.prompts import load_prompts
    from reclf.evaluate.tasks.zeroshot import choose_prompts, pick_prompt_file

    if prompts:
        ps = load_prompts(prompts)
        if not ps.classes:
            raise ValueError(f"--prompts {ps.path} has no multiclass section; it names no classes")
        names = sorted(classes or ps.classes)
    elif classes:
        names = sorted(classes)
        try:
            ps = pick_prompt_file("auto", names)
        except ValueError:
            return {c: [c] for c in names}, {"file": None, "rule": "each class's name is its one prompt "
                                                                    "(no built-in prompt file has these classes)"}
    else:
        raise ValueError("give --classes 'a,b,c' or --prompts FILE")
    if len(set(names)) != len(names):
        raise ValueError(f"--classes {names}: a class is named twice")
    return choose_prompts(names, ps, per_class, seed), ps.describe()


def read_labels(path: str | Path, images: ImageList, classes: list[str]) -> tuple[list[int], list[int], list[str]]:
    """``(file index, class index)`` of every labelled file in the labels' order, and the labels whose file is not
    in the folder. Files are matched by their path relative to the folder, else by a unique file name."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--labels {path}: no such file")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    icol = next((c for c in LABEL_IMAGE_COLUMNS if c in df.columns), None)
    ccol = next((c for c in LABEL_CLASS_COLUMNS if c in df.columns), None)
    if icol is None or ccol is None:
        raise ValueError(f"--labels {path}: needs an image column ({', '.join(LABEL_IMAGE_COLUMNS)}) and a class "
                         f"column ({', '.join(LABEL_CLASS_COLUMNS)}); it has {list(df.columns)}")
    by_id = {i: k for k, i in enumerate(images.ids)}
    names = [Path(i).name for i in images.ids]
    by_name = {n: k for k, n in enumerate(names) if names.count(n) == 1}
    from reclf.data.prompts import norm_name

    by_class = {norm_name(c): ci for ci, c in enumerate(classes)}
    files, ys, missing = [], [], []
    for row, (image, cls) in enumerate(zip(df[icol].astype(str), df[ccol].astype(str), strict=True), start=2):
        k = by_id.get(image.replace("\\", "/"), by_name.get(Path(image).name))
        if k is None:
            missing.append(image)
            continue
        ci = by_class.get(norm_name(cls))
        if ci is None:
            raise ValueError(f"--labels {path}, line {row}: class {cls!r} of {image} is not one of {classes}")
        files.append(k)
        ys.append(ci)
    return files, ys, missing


def write_predictions(out: str | Path, images: ImageList, classes: list[str], scores: np.ndarray, kept: np.ndarray,
                      bad: list[tuple[int, str]]) -> Path:
    """One row per input file (see the module docstring), written atomically."""
    import pandas as pd

    from reclf.utils.io import atomic_path

    n = len(images.ids)
    table = np.full((n, len(classes)), np.nan)
    table[kept] = scores
    pred = np.full(n, "", dtype=object)
    pred[kept] = [classes[int(i)] for i in scores.argmax(1)]
    error = np.full(n, "", dtype=object)
    for i, why in bad:
        error[i] = why
    df = pd.DataFrame({"image": images.ids, "prediction": pred})
    for ci, c in enumerate(classes):
        df[f"score:{c}"] = table[:, ci]
    df["error"] = error
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    return out


def classify(
    loaded: LoadedModel, images: ImageList, prompts: dict[str, list[str]], cfg: ZeroShotConfig, score: str = "method",
    device: str = "cpu",
) -> tuple[dict[str, Any], Any]:
    """``(rule -> [N, C] class scores, Embeddings)`` of the readable images (zeroshot's scoring)."""
    from reclf.methods.inference import class_score_table, embed_images, image_size_of
    from reclf.utils.console import say

    size = cfg.image_size or image_size_of(loaded.model)
    n = len(images.paths)
    n_batches = -(-n // cfg.batch_size)
    batch = 0

    def progress(done: int, total: int, n_bad: int) -> None:
        nonlocal batch
        batch += 1
        say(f"batch {min(batch, n_batches)}/{n_batches}: {done}/{total} images"
            + (f", {n_bad} unreadable" if n_bad else ""), "classify")

    emb = embed_images(loaded.model, images.paths, cfg.batch_size, local=True, size=size, device=device,
                       ids=images.ids, progress=progress)
    if not len(emb):
        raise ValueError(f"none of the {n} images could be read (first error: {emb.bad[:1]})")
    per_mode = class_score_table(loaded.model, emb.features(), prompts, cfg.reduce, cfg.chunk)
    if score not in per_mode:
        raise ValueError(f"--score {score}: this model has the rules {list(per_mode)}")
    return per_mode, emb


def label_metrics(per_mode: dict[str, Any], y: np.ndarray, ids: list[str], n_classes: int, cfg: ZeroShotConfig,
                  extra: dict[str, Any]) -> dict[str, Estimate]:
    """zeroshot's accuracy and macro F1 (:func:`reclf.evaluate.tasks.zeroshot.multiclass_metrics`), plus the
    one-vs-rest macro AUROC of each rule's class scores, all with bootstrap intervals."""
    from reclf.evaluate.metrics import macro_auroc
    from reclf.evaluate.stats import bootstrap_ci
    from reclf.evaluate.tasks.zeroshot import multiclass_metrics

    metrics = multiclass_metrics(per_mode, y, ids, n_classes, cfg.n_boot, cfg.seed, extra)
    onehot = np.eye(n_classes)[y]
    for mode, s in per_mode.items():
        metrics[f"{mode}/macro_auroc"] = bootstrap_ci(macro_auroc, onehot, s.numpy(), n_boot=cfg.n_boot, seed=cfg.seed)
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="exported model folder, run folder or checkpoint")
    parser.add_argument("--images", required=True, help="folder of PNG / JPEG / DICOM files (searched recursively)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--classes", help="comma list of classes, e.g. 'Atelectasis,Edema,Pleural Effusion'")
    which.add_argument("--prompts", help="prompt YAML (its multiclass classes) or a built-in name (chexpert, synthcxr)")
    parser.add_argument("--out", required=True, help="predictions CSV")
    parser.add_argument("--labels", default=None, help="CSV with image and class columns: adds accuracy, macro F1, "
                                                       "AUROC with 95%% intervals")
    parser.add_argument("--score", default="method", choices=("method", "global", "local", "fused"),
                        help="the rule of the predictions (default method: the model's own score)")
    parser.add_argument("--prompts-per-class", type=int, default=None, help="sample K prompts per class (default all)")
    parser.add_argument("--reduce", choices=("mean", "max"), default=None, help="over a class's prompts (default mean)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the prompt sampling and the bootstrap (0)")
    parser.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples for the 95%% intervals (1000)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass (32)")
    parser.add_argument("--image-size", type=int, default=None, help="input size (default: the model's own)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")


def run(args: argparse.Namespace) -> int:
    from reclf.evaluate.cli import given
    from reclf.evaluate.common import items_sha256, model_info
    from reclf.evaluate.loading import image_size_of, load_model
    from reclf.evaluate.results import TaskResult, format_table
    from reclf.utils.console import say
    from reclf.utils.io import atomic_write_json

    # the zero-shot fields among classify's options (the rest: images, classes, labels, ... are classify's own)
    fields_of = {f.name for f in dataclasses.fields(ZeroShotConfig)}
    cfg = ZeroShotConfig(**given(ZeroShotConfig, {k: v for k, v in vars(args).items() if k in fields_of}))
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    prompts, prompt_info = class_prompts(classes, args.prompts, cfg.prompts_per_class, cfg.seed)
    names = list(prompts)
    images = list_folder(args.images)
    if images.ignored:
        say(f"{len(images.ignored)} files of other types ignored (first: {images.ignored[0]})", "classify")
    loaded = load_model(args.model, args.device)
    if prompt_info.get("file") is None:
        say(f"classes {names}: {prompt_info['rule']}", "classify")
    per_mode, emb = classify(loaded, images, prompts, cfg, args.score, args.device)
    out = write_predictions(args.out, images, names, per_mode[args.score].numpy(), emb.kept, emb.bad)
    bad_named = [(images.ids[i], why) for i, why in emb.bad]
    print_bad(bad_named, len(images.ids), "classify")
    say(f"wrote {out}: {len(emb)} images scored against {len(names)} classes ({args.score} score)", "classify")
    if not args.labels:
        return 0
    files, ys, missing = read_labels(args.labels, images, names)
    if missing:
        say(f"{len(missing)} labelled files are not in {args.images} (first: {missing[0]})", "classify")
    row_of = {int(k): r for r, k in enumerate(emb.kept)}
    use = [(row_of[k], y) for k, y in zip(files, ys, strict=True) if k in row_of]
    if not use:
        raise ValueError(f"--labels {args.labels}: none of the labelled files could be scored")
    rows = np.asarray([r for r, _ in use])
    y = np.asarray([c for _, c in use])
    ids = [emb.ids[r] for r in rows]
    extra: dict[str, Any] = {"classes": names, "prompts": prompts}
    metrics = label_metrics({k: v[rows] for k, v in per_mode.items()}, y, ids, len(names), cfg, extra)
    config = asdict(cfg) | {"prompt_file": prompt_info, "score": args.score, "labels": str(args.labels),
                            "image_size": cfg.image_size or image_size_of(loaded.model)}
    data = {"path": str(args.images), "files": len(images.ids), "used": len(use), "bad_rows": len(emb.bad),
            "split_list_sha256": items_sha256(ids),
            "labels_missing": len(missing),
            "bad_examples": [{"image": i, "reason": why} for i, why in bad_named[:20]]}
    result = TaskResult("classify", metrics, config, model_info(loaded), data, [cfg.seed], extra)
    path = out.with_name(out.stem + ".results.json")
    atomic_write_json(path, result.to_dict())
    print(format_table(result))
    say(f"wrote {path}", "classify")
    return 0
