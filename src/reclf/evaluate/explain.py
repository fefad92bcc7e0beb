"""``reclf explain --model DIR --image PNG --report TEXT --out DIR``: why the model matched them.

Writes the pictures of :mod:`reclf.viz.figures` for one image and one report:
``attention.png`` (per-word attention overlays), ``importance.png`` (words shaded by IRM
importance, when the method has IRM), ``relations.png`` (the SRM relation matrix, when the
method has SRM) and ``explanation.json`` (words, weights, scores).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from reclf.methods.interface import EvaluableModel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="exported model folder, run folder or checkpoint")
    parser.add_argument("--image", required=True, help="radiograph (PNG/JPEG/DICOM)")
    parser.add_argument("--report", required=True, help="report text, or @FILE to read it from a file")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--max-words", type=int, default=16)


def explain_pictures(model: EvaluableModel, image: np.ndarray, report: str, out: str | Path, prefix: str = "",
                     max_words: int = 16, title: str = "", roles: Any = None) -> dict[str, Any]:
    """Explain ``(image [S,S] in [0,1], report)`` and write the figures to ``out``; returns what was written.

    Words are shown in the order of the model's own weight (IRM importance, the implicit pooling weight),
    highest first, so the figure leads with the words that carry the score. ``roles``: SynthCXR's
    word-role record of this report (``reclf.evaluate.tasks.diagnostics.read_word_roles``); each word is then
    labelled with its role (finding, location, filler, ...).
    """
    import torch

    from reclf.utils.io import atomic_write_json
    from reclf.viz.figures import attention_overlays, relation_matrix, shaded_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        ex = model.explain(torch.as_tensor(image, dtype=torch.float32)[None, None], report)
    words = list(ex.words)
    labels = list(words)
    if roles is not None:
        from reclf.evaluate.tasks.diagnostics import align_roles

        word_roles, _ = align_roles(words, roles)
        labels = [w if r == "unknown" else f"{w} ({r})" for w, r in zip(words, word_roles, strict=True)]
    info: dict[str, Any] = {"report": report, "words": words, "global_score": float(ex.global_score),
                            "local_score": None if ex.local_score is None else float(ex.local_score),
                            "method": model.method, "figures": {}}
    if ex.attention is not None:
        attn = ex.attention.float().cpu().numpy()
        order = list(range(len(words)))
        if ex.word_weights is not None:  # show the most important words first
            order = list(np.argsort(-ex.word_weights.float().cpu().numpy(), kind="stable"))
        order = order[:max_words]
        info["figures"]["attention"] = str(attention_overlays(
            image, attn[order], [labels[i] for i in order], out / f"{prefix}attention.png", title=title))
    if ex.word_weights is not None:
        w = ex.word_weights.float().cpu().numpy()
        info["word_weights"] = [float(x) for x in w]
        info["figures"]["importance"] = str(shaded_report(words, w, out / f"{prefix}importance.png",
                                                          title=title or "word importance (IRM)"))
    if ex.relations is not None:
        r = ex.relations.float().cpu().numpy()
        info["figures"]["relations"] = str(relation_matrix(r, ["[global]", *words], out / f"{prefix}relations.png",
                                                           title=title))
    atomic_write_json(out / f"{prefix}explanation.json", info)
    return info


def read_report_arg(text: str) -> str:
    """``--report``: the text itself, or ``@FILE`` (UTF-8); errors name the file."""
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise FileNotFoundError(f"--report @{path}: no such file")
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"--report @{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); re-save it as UTF-8"
            ) from exc
    if not text.strip():
        raise ValueError("--report is empty; give the report text (or @FILE)")
    return text


def run(args: argparse.Namespace) -> int:
    from reclf.data.images import ImageReadError, load_image
    from reclf.evaluate.features import prepare_image
    from reclf.evaluate.loading import image_size_of, load_model

    if args.image_size is not None and args.image_size < 8:
        raise ValueError(f"--image-size {args.image_size} is too small (use the model's size, e.g. 128 or 224)")
    if args.max_words < 1:
        raise ValueError(f"--max-words {args.max_words} must be at least 1")
    report = read_report_arg(args.report)
    try:  # the cheap checks first: a bad image or report fails before the model is loaded
        load_image(args.image)
    except ImageReadError as exc:
        raise ImageReadError(f"--image: {exc}; give a PNG, JPEG or DICOM radiograph") from exc
    loaded = load_model(args.model)
    size = args.image_size or image_size_of(loaded.model)
    image = prepare_image(args.image, size)
    info = explain_pictures(loaded.model, image, report, args.out, max_words=args.max_words, title=loaded.label)
    print(f"global score {info['global_score']:.3f}" + (f", local score {info['local_score']:.3f}"
                                                        if info["local_score"] is not None else ""))
    for name, path in info["figures"].items():
        print(f"{name}: {path}")
    if not info["figures"]:
        print(f"method {loaded.model.method} has no word-level explanation (global only)")
    return 0
