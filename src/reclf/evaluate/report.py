"""``reclf report RUN ... --out DIR``: one Markdown report over many evaluation runs.

``RUN`` is a results.json or a folder searched recursively for them. The report has one table
per task (rows: models, floors and ceilings first and last; columns: metrics as
value ± std [95 % CI]), a bar chart per task of its headline metrics with the intervals, and,
with ``--data`` (or the data of a grounding/relations run), explanation pictures for a few
sample images per model: per-word attention overlays, the report shaded by IRM importance and
the SRM relation matrix. Runs whose model label ends in ``@seedN`` (several pretraining seeds of
one method) are merged: mean ± std over the pretraining seeds, intervals averaged.
"""

from __future__ import annotations

import argparse
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

SEED_SUFFIX = re.compile(r"^(?P<base>.+)@seed(?P<seed>\d+)$")
HEADLINE = {
    "zeroshot": ["method/accuracy", "global/accuracy", "fused/accuracy"],
    "linear": ["1%/auroc", "10%/auroc", "100%/auroc", "1%/accuracy", "10%/accuracy", "100%/accuracy"],
    "segment": ["100%/dice", "pneumothorax/100%/dice", "opacity/100%/dice", "10%/dice"],
    "retrieve": ["method/i2t/R@5", "method/t2i/R@5", "global/i2t/R@5", "global/t2i/R@5", "method/i2t/P@10"],
    "relations": ["side", "zone", "severity", "negation", "all_foils"],
    "grounding": ["pointing_game", "attention_iou"],
}
TASK_ORDER = ("zeroshot", "linear", "segment", "retrieve", "relations", "grounding")
# the one-table summary at the top of a report: (task, metric, column header); a method without the
# method-score variant (global-only methods) is shown with its global score
SUMMARY = (
    ("zeroshot", "method/accuracy", "zero-shot acc"),
    ("retrieve", "method/i2t/P@10", "img→report P@10"),
    ("retrieve", "method/t2i/R@10", "report→img R@10"),
    ("relations", "negation", "binding: negation"),
    ("relations", "side", "binding: side"),
    ("relations", "all_foils", "binding: all foils"),
    ("grounding", "pointing_game", "pointing game"),
    ("linear", "100%/auroc", "linear AUROC (100 %)"),
    ("segment", "opacity/100%/dice_pos", "seg Dice, positives (100 %)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="results.json files or folders holding them")
    parser.add_argument("--out", required=True, help="output folder (report.md + figures/)")
    parser.add_argument("--data", default=None, help="study folder for the explanation samples")
    parser.add_argument("--samples", type=int, default=2, help="sample images explained per model (0: none)")
    parser.add_argument("--title", default="reclf evaluation report")


def _label_key(label: str) -> tuple[int, str]:
    return (0 if label.startswith("floor") else 2 if label.startswith("ceiling") else 1, label)


def merge_seeds(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``task -> label -> metrics`` with ``@seedN`` runs of one label merged (mean, std over seeds)."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in results:
        label = str(r["model"].get("label") or r["model"].get("method") or "model")
        m = SEED_SUFFIX.match(label)
        base = m.group("base") if m else label
        grouped.setdefault(r["task"], {}).setdefault(base, []).append(r)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task, by_label in grouped.items():
        out[task] = {}
        for label, runs in by_label.items():
            if len(runs) == 1:
                out[task][label] = dict(runs[0]["metrics"])
                continue
            names = list(OrderedDict.fromkeys(k for r in runs for k in r["metrics"]))
            merged = {}
            for name in names:
                vals = [r["metrics"][name] for r in runs if name in r["metrics"]]
                v = np.asarray([x["value"] if x["value"] is not None else np.nan for x in vals], dtype=float)
                lo = np.asarray([x["ci_low"] if x["ci_low"] is not None else np.nan for x in vals], dtype=float)
                hi = np.asarray([x["ci_high"] if x["ci_high"] is not None else np.nan for x in vals], dtype=float)
                ok = ~np.isnan(v)
                mean = float(v[ok].mean()) if ok.any() else float("nan")
                merged[name] = {
                    "value": mean,
                    "std": float(v[ok].std(ddof=1)) if ok.sum() > 1 else 0.0,
                    "ci_low": float(np.nanmean(lo)) if not np.isnan(lo).all() else None,
                    "ci_high": float(np.nanmean(hi)) if not np.isnan(hi).all() else None,
                    "n": max(int(x.get("n") or 0) for x in vals),
                    "seeds": int(ok.sum()),
                    "pretrain_seeds": len(runs),
                }
            out[task][label] = merged
    return out


def fmt(m: dict[str, Any] | None, digits: int = 3) -> str:
    if not m or m.get("value") is None or (isinstance(m["value"], float) and np.isnan(m["value"])):
        return "n/a"
    s = f"{m['value']:.{digits}f}"
    if m.get("std") is not None:
        s += f" ± {m['std']:.{digits}f}"
    if m.get("ci_low") is not None and m.get("ci_high") is not None:
        s += f" [{m['ci_low']:.{digits - 1}f}, {m['ci_high']:.{digits - 1}f}]"
    return s


def markdown_tables(task: str, by_label: dict[str, dict[str, Any]], max_cols: int = 6) -> list[str]:
    """The task's table(s): models x metrics, split every ``max_cols`` metrics so it stays readable."""
    labels = sorted(by_label, key=_label_key)
    names = list(OrderedDict.fromkeys(k for lab in labels for k in by_label[lab]))
    lines: list[str] = []
    for start in range(0, len(names), max_cols):
        cols = names[start : start + max_cols]
        lines.append("| model | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for lab in labels:
            lines.append(f"| {lab} | " + " | ".join(fmt(by_label[lab].get(c)) for c in cols) + " |")
        lines.append("")
    return lines


def summary_table(merged: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Models x the headline metric of every task (mean ± std over pretraining seeds), one table."""
    cols = [(t, k, h) for t, k, h in SUMMARY if t in merged]
    labels = sorted({lab for t, _, _ in cols for lab in merged[t]}, key=_label_key)
    if not cols or not labels:
        return []

    def cell(task: str, key: str, label: str) -> str:
        metrics = merged[task].get(label) or {}
        m = metrics.get(key) or metrics.get(key.replace("method/", "global/"))
        if not m or m.get("value") is None or np.isnan(m["value"]):
            return "–"
        return f"{m['value']:.3f}" + (f" ± {m['std']:.3f}" if m.get("std") else "")

    lines = ["## summary", "", "| model | " + " | ".join(h for _, _, h in cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {lab} | " + " | ".join(cell(t, k, lab) for t, k, _ in cols) + " |" for lab in labels]
    return lines + ["", "Confidence intervals and every other metric: the per-task sections below.", ""]


def headline_metrics(task: str, by_label: dict[str, dict[str, Any]]) -> list[str]:
    present = OrderedDict.fromkeys(k for m in by_label.values() for k in m)
    chosen = [k for k in HEADLINE.get(task, []) if k in present]
    return chosen[:3] or [k for k in present if not k.startswith("chance/")][:2]


def write_report(results: list[dict[str, Any]], out: str | Path, data: str | None = None, samples: int = 2,
                 title: str = "reclf evaluation report") -> Path:
    from reclf.utils.io import atomic_write_text
    from reclf.viz.figures import bar_chart

    out = Path(out)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    merged = merge_seeds(results)
    lines = [f"# {title}", "",
             f"{len(results)} evaluation runs. Cells: value ± std over seeds [95 % bootstrap CI]; "
             "`floor:` = random-init encoder of the same architecture, `ceiling:` = supervised encoder "
             "trained on the labels. Labels merged over `@seedN` pretraining seeds show mean ± std over them.", ""]
    lines += summary_table(merged)
    for task in sorted(merged, key=lambda t: TASK_ORDER.index(t) if t in TASK_ORDER else 99):
        by_label = merged[task]
        lines += [f"## {task}", ""]
        na = [r["model"].get("label") for r in results if r["task"] == task and r.get("extra", {}).get(
            "not_applicable")]
        by_label_applicable = {k: v for k, v in by_label.items() if v}
        if by_label_applicable:
            lines += markdown_tables(task, by_label_applicable)
        if na:
            lines += [f"Not applicable (no word-region attention): {', '.join(sorted(set(map(str, na))))}.", ""]
        for metric in headline_metrics(task, by_label_applicable):
            labels = sorted([lab for lab in by_label_applicable if metric in by_label_applicable[lab]], key=_label_key)
            if not labels:
                continue
            ms = [by_label_applicable[lab][metric] for lab in labels]

            def g(m: dict, k: str) -> float:
                return float("nan") if m.get(k) is None else float(m[k])

            safe = re.sub(r"[^A-Za-z0-9]+", "_", f"{task}_{metric}").strip("_")
            path = bar_chart(labels, [g(m, "value") for m in ms], [g(m, "ci_low") for m in ms],
                             [g(m, "ci_high") for m in ms], f"{task}: {metric}", figs / f"{safe}.png", metric)
            lines += [f"![{task} {metric}](figures/{path.name})", ""]
    lines += _explanations(results, figs, data, samples)
    lines += ["## runs", ""] + [f"- `{r['_path']}` ({r['task']}, {r['model'].get('label')}, "
                                f"sha256 {str(r['model'].get('sha256'))[:12]})" for r in results] + [""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _explanations(results: list[dict[str, Any]], figs: Path, data: str | None, samples: int) -> list[str]:
    """Explanation pictures of ``samples`` images for every distinct, loadable model with a local matcher."""
    if samples <= 0:
        return []
    if data is None:
        data = next((r["data"]["path"] for r in results if r["task"] in ("grounding", "relations")
                     and r.get("data", {}).get("path")), None)
    if data is None or not Path(data).is_dir():
        return []
    from reclf.evaluate.common import load_table
    from reclf.evaluate.explain import explain_pictures
    from reclf.evaluate.features import prepare_image
    from reclf.evaluate.loading import image_size_of, load_model

    table = load_table(data)
    rows = table.df.head(samples)
    models: OrderedDict[str, str] = OrderedDict()
    for r in results:
        label, path = str(r["model"].get("label")), r["model"].get("path")
        if r["model"].get("has_local") and path and Path(path).exists() and not label.startswith(("floor", "ceiling")):
            base = SEED_SUFFIX.match(label)
            models.setdefault(base.group("base") if base else label, path)
    if not models:
        return []
    lines = ["## explanations", "", f"Sample images from `{data}` explained with their own reports.", ""]
    for label, path in models.items():
        try:
            model = load_model(path).model
        except (OSError, ValueError) as exc:
            lines += [f"- {label}: could not load {path} ({exc})"]
            continue
        size = image_size_of(model)
        safe = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")
        lines += [f"### {label}", ""]
        for _, row in rows.iterrows():
            image = prepare_image(table.folder / row["image_path"], size)
            sid = re.sub(r"[^A-Za-z0-9]+", "_", str(row["study_id"]))
            info = explain_pictures(model, image, str(row["report"]), figs / "explain", prefix=f"{safe}_{sid}_",
                                    title=f"{label} · {row['study_id']}")
            text = " ".join(str(row["report"]).split())  # one line: reports hold newlines
            lines += [f"Study `{row['study_id']}`: {text}", ""]
            for name, fig in info["figures"].items():
                lines += [f"![{label} {name}](figures/explain/{Path(fig).name})", ""]
    return lines


def run(args: argparse.Namespace) -> int:
    from reclf.evaluate.results import find_results

    results = find_results(args.runs)
    if not results:
        raise FileNotFoundError(f"no results.json under {args.runs}")
    path = write_report(results, args.out, args.data, args.samples, args.title)
    print(f"wrote {path} ({len(results)} runs)")
    return 0
