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

from reclf.evaluate.tasks import TASKS

SEED_SUFFIX = re.compile(r"^(?P<base>.+)@seed(?P<seed>\d+)$")
# the registry says which tasks there are, in which order a report shows them, and which metrics it charts
HEADLINE = {name: list(spec.headline) for name, spec in TASKS.items()}
TASK_ORDER = tuple(TASKS)
# the one-table summary at the top of a report: (task, metric, column header); a method without the
# method-score variant (global-only methods) is shown with its global score
SUMMARY = (
    ("zeroshot", "method/accuracy", "zero-shot acc"),
    ("retrieve", "method/i2t/P@10", "img→report P@10"),
    ("retrieve", "method/t2i/R@10", "report→img R@10"),
    ("relations", "negation", "binding: negation"),
    ("relations", "side", "binding: side"),
    ("relations", "swap_side", "binding: swap sides"),
    ("relations", "swap_zone", "binding: swap zones"),
    ("relations", "all_foils", "binding: all foils"),
    ("grounding", "pointing_game", "pointing game"),
    ("grounding", "floor/pointing_game", "pointing game, random init"),
    ("grounding", "attention_entropy", "attention entropy"),
    ("phrase-grounding", "cnr", "phrase CNR"),
    ("grounding", "floor/attention_entropy", "entropy, random init"),
    ("linear", "1%/auroc", "linear AUROC (1 %)"),
    ("linear", "100%/auroc", "linear AUROC (100 %)"),
    ("segment", "opacity/100%/dice_pos", "seg Dice, positives (100 %)"),
)
#: (task, metric, header) compared item by item between the reference method and every other one
PAIRED = (
    ("zeroshot", "method/accuracy", "zero-shot acc"),
    ("retrieve", "method/t2i/R@10", "report→img R@10"),
    ("retrieve", "method/i2t/P@10", "img→report P@10"),
    ("relations", "side", "binding: side"),
    ("relations", "swap_side", "binding: swap sides"),
    ("relations", "swap_zone", "binding: swap zones"),
    ("relations", "all_foils", "binding: all foils"),
)
DID_NOT_LEARN = "**did not learn**"


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


def method_or_global(values: dict[str, Any], key: str) -> Any:
    """``values[key]``, or for a global-only method (no ``method/`` variant) its ``global/`` value."""
    found = values.get(key)
    return found if found is not None else values.get(key.replace("method/", "global/"))


def _summary_cell(merged: dict[str, dict[str, dict[str, Any]]], task: str, key: str, label: str) -> str:
    metrics = merged[task].get(label) or {}
    m = method_or_global(metrics, key)
    if not m or m.get("value") is None or np.isnan(m["value"]):
        return "–"
    # merged over pretraining seeds: mean ± std, even when the seeds agree exactly (std 0: e.g. a tie in every item)
    over_seeds = (m.get("seeds") or 1) > 1 or bool(m.get("std"))
    text = f"{m['value']:.3f}" + (f" ± {m['std']:.3f}" if over_seeds else "")
    if m.get("ci_low") is not None and m.get("ci_high") is not None and not over_seeds:
        text += f" [{m['ci_low']:.2f}, {m['ci_high']:.2f}]"
    return text


def summary_rows(merged: dict[str, dict[str, dict[str, Any]]], verdicts: dict[str, list[str]] | None = None,
                 markdown: bool = True) -> list[str]:
    """Models x the headline metric of every task (value [95 % CI], or mean ± std over pretraining seeds).

    ``verdicts``: label -> reasons it did not learn (see ``reclf.demo.learning_verdicts``); a
    label with reasons is marked **did not learn**.
    """
    cols = [(t, k, h) for t, k, h in SUMMARY if t in merged]
    labels = sorted({lab for t, _, _ in cols for lab in merged[t]}, key=_label_key)
    if not cols or not labels:
        return []
    verdicts = verdicts or {}

    def name(label: str) -> str:
        base = SEED_SUFFIX.match(label)
        bad = verdicts.get(base.group("base") if base else label)
        return f"{label} {DID_NOT_LEARN if markdown else '(did not learn)'}" if bad else label

    rows = [[name(lab)] + [_summary_cell(merged, t, k, lab) for t, k, _ in cols] for lab in labels]
    header = ["model"] + [h for _, _, h in cols]
    if markdown:
        return ["| " + " | ".join(header) + " |", "|---|" + "---|" * len(cols)] + [
            "| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    return ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in [header, *rows]]


def summary_table(merged: dict[str, dict[str, dict[str, Any]]], verdicts: dict[str, list[str]] | None = None
                  ) -> list[str]:
    """The summary section: :func:`summary_rows` under a heading."""
    rows = summary_rows(merged, verdicts)
    if not rows:
        return []
    return ["## summary", "", *rows, "",
            "Cells: value [95 % bootstrap CI] for one pretraining seed, mean ± std over seeds otherwise. "
            "Confidence intervals and every other metric: the per-task sections below.", ""]


def paired_differences(results: list[dict[str, Any]], reference: str = "reclf", n_boot: int = 1000) -> list[str]:
    """``reference − other`` for every other pretrained model on the same test items (paired bootstrap).

    Pairs are (pretraining seed, test item): seed ``s`` of the reference is paired with seed ``s`` of the
    other method on the same item, over every seed both have (one seed: the items alone), so the
    interval covers the spread over items *and* seeds. A difference whose interval excludes 0 ranks the
    two methods on this data.
    """
    from reclf.evaluate.stats import paired_difference

    def split_seed(label: str) -> tuple[str, str]:
        m = SEED_SUFFIX.match(label)
        return (m.group("base"), m.group("seed")) if m else (label, "0")

    runs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in results:
        base, seed = split_seed(str(r["model"].get("label") or ""))
        if not base.startswith(("floor", "ceiling")):
            runs.setdefault((r["task"], base), {})[seed] = r
    others = sorted({b for (_, b) in runs if b != reference})
    cols = [(t, k, h) for t, k, h in PAIRED if (t, reference) in runs]
    if not cols or not others:
        return []
    n_seeds = max(len(v) for v in runs.values())
    lines = [f"## paired differences: {reference} − other", "",
             f"Each cell: mean difference {reference} − model over the same test items [95 % paired bootstrap CI] "
             f"(pairs: the same item and pretraining seed, over {n_seeds} seed(s)); an interval that excludes 0 "
             "ranks the two methods on SynthCXR.", "",
             "| model | " + " | ".join(h for _, _, h in cols) + " |", "|---|" + "---|" * len(cols)]

    def seeded(task: str, base: str, key: str, seeds: list[str]) -> tuple[list[str], list[float]]:
        ids: list[str] = []
        values: list[float] = []
        for seed in seeds:
            items = method_or_global(runs[(task, base)][seed].get("extra", {}).get("per_item", {}), key)
            if items:
                ids += [f"{seed}/{i}" for i in items["ids"]]
                values += list(items["values"])
        return ids, values

    for other in others:
        cells = []
        for task, key, _ in cols:
            seeds = sorted(set(runs[(task, reference)]) & set(runs.get((task, other), {})))
            a = seeded(task, reference, key, seeds)
            b = seeded(task, other, key, seeds) if seeds else ([], [])
            if not a[0] or not b[0]:
                cells.append("–")
                continue
            d = paired_difference(a[0], a[1], b[0], b[1], n_boot=n_boot)
            cells.append(f"{d.value:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]")
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return lines + [""]


def headline_metrics(task: str, by_label: dict[str, dict[str, Any]]) -> list[str]:
    present = OrderedDict.fromkeys(k for m in by_label.values() for k in m)
    chosen = [k for k in HEADLINE.get(task, []) if k in present]
    return chosen[:3] or [k for k in present if not k.startswith("chance/")][:2]


def _references(task: str, metric: str, by_label: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Reference lines of a bar chart: chance (when the task states it), the floor and the ceiling."""
    refs: dict[str, float] = {}
    chance_key = {"zeroshot": "chance/accuracy"}.get(task)
    if task == "retrieve" and "/R@" in metric:
        chance_key = "chance/R@" + metric.rsplit("/R@", 1)[1]
    if task == "relations":
        refs["chance"] = 0.5 if not metric.startswith("all_foils") else float("nan")
    for lab, metrics in by_label.items():
        if chance_key and chance_key in metrics and metrics[chance_key].get("value") is not None:
            refs["chance"] = float(metrics[chance_key]["value"])
        for kind in ("floor", "ceiling"):
            if lab.startswith(kind) and metric in metrics and metrics[metric].get("value") is not None:
                refs[kind] = float(metrics[metric]["value"])
    return {k: v for k, v in refs.items() if not np.isnan(v)}


def demo_sections(demo: dict[str, Any], results: list[dict[str, Any]], figs: Path) -> list[str]:
    """What only a demo run knows: the recipe, the text features, the learning check and the loss curves."""
    from reclf.viz.figures import loss_curves

    lines = ["## recipe", ""]
    recipes = demo.get("recipes", {})
    if recipes:
        cfg = next(iter(recipes.values()))["config"]
        te, tr, ie = cfg["text_encoder"], cfg["train"], cfg["image_encoder"]
        def rates(t: dict[str, Any]) -> str:  # heads, and each part that has its own rate (train.lr_<part>)
            own = [f"{k[3:]} {t[k]:g}" for k in ("lr_image", "lr_text") if t.get(k) is not None]
            parts = [f"heads {t['lr']:g}", *own]
            return ", ".join(parts) if len(parts) > 1 else f"{t['lr']:g}"

        lrs = {label.split("@seed")[0]: rates(r["config"]["train"]) for label, r in recipes.items()}
        if len(set(lrs.values())) == 1:
            lr = f"AdamW lr {next(iter(lrs.values()))}"
        else:  # tuned per method (`reclf tune`): say each one, never one method's as everyone's
            lr = ("AdamW at each method's tuned learning rates (" + "; ".join(
                f"{m} {v}" for m, v in lrs.items()) + "; `reclf tune`, docs/training.md)")
        lines += [
            f"Every method: the shipped preset `demo_<method>` (`reclf presets`), image encoder `{ie['name']}` at "
            f"{ie['image_size']} px from random init, text encoder `{te['name']}` "
            f"({'frozen' if te['freeze'] else 'trained'}, "
            f"{'words alone, the report their mean' if te.get('context') == 'word' else te['pooling'] + ' pooling'}, "
            f"{te['max_tokens']} tokens), "
            f"{tr['max_steps']} steps of batch {cfg['data']['batch_size']}, {lr}, "
            f"weight decay {tr['weight_decay']}, warm-up {tr['warmup_fraction']} then cosine; seeds: "
            f"{demo.get('settings', {}).get('seeds')}. The resolved config of every run is in `demo.json`.", ""]
        prints = {label: r.get("config_fingerprint") for label, r in recipes.items() if r.get("config_fingerprint")}
        if prints:  # the recipe each number came from (results.json holds the same fingerprint of its model)
            lines += ["Config fingerprints (the recipe each run was trained with): "
                      + ", ".join(f"{label} `{fp}`" for label, fp in prints.items()) + ".", ""]
    resumed = demo.get("resumed") or {}
    if resumed:
        lines += ["Resumed runs (a killed demo's run continued from its last checkpoint, not started over): "
                  + ", ".join(f"{label} from step {step}" for label, step in resumed.items()) + ".", ""]
    text = demo.get("text_features") or {}
    if text.get("frozen"):
        lines += [f"Text features: {text['reports']} distinct reports encoded once by the frozen `{text['encoder']}` "
                  f"in {text['seconds']:.0f} s; {100 * text['truncated_share']:.1f} % of them are longer than "
                  f"{text['max_tokens']} tokens (their tail is cut; a word cut in the middle is dropped).", ""]
    checks = demo.get("learning", {})
    if checks:
        lines += ["## learning check", "",
                  "Mean training loss of the first and the last 100 steps (a quarter of the run when it is "
                  "shorter); a run whose last is above 0.9 × its first did not learn.", "",
                  "| run | first steps | last steps | last / first | loss fell |", "|---|---|---|---|---|"]
        for label, c in checks.items():
            lines.append(f"| {label} | {c.get('first_loss')} | {c.get('last_loss')} | {c.get('ratio')} | "
                         f"{'yes' if c.get('learned') else '**no**'} |")
        lines.append("")
        runs = {label: Path(demo["models"][label]).parent for label in checks if label in demo.get("models", {})}
        if runs:
            path = loss_curves(runs, figs / "pretrain_loss.png")
            lines += [f"![pretraining loss](figures/{path.name})", ""]
    bad = demo.get("did_not_learn") or {}
    if bad:
        lines += ["## did not learn", ""] + [f"- **{k}**: {'; '.join(v)}" for k, v in bad.items()] + [""]
    return lines


def diagnostics_sections(results: list[dict[str, Any]], figs: Path) -> list[str]:
    """The diagnostics table (with paired ablation differences) and its two figures, when there are results."""
    diag = [r for r in results if r.get("task") == "diagnostics"]
    if not diag:
        return []
    from reclf.evaluate.tasks.diagnostics import diagnostics_table
    from reclf.viz.diagnostics import importance_by_role, relation_mass

    lines = ["## diagnostics: what IRM and SRM learned", "", diagnostics_table(diag), ""]
    for fn, name in ((importance_by_role, "diagnostics_importance.png"), (relation_mass, "diagnostics_relations.png")):
        try:
            path = fn(diag, figs / name)
        except ValueError:  # no model with that part
            continue
        lines += [f"![{name}](figures/{path.name})", ""]
    return lines + ["What the numbers mean and do not mean: docs/evaluation.md (Diagnostics).", ""]


def write_report(results: list[dict[str, Any]], out: str | Path, data: str | None = None, samples: int = 2,
                 title: str = "reclf evaluation report", demo: dict[str, Any] | None = None) -> Path:
    from reclf.evaluate.provenance import provenance_table, published_comparison
    from reclf.utils.io import atomic_write_text
    from reclf.viz.figures import bar_chart

    out = Path(out)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    merged = merge_seeds(results)
    verdicts = (demo or {}).get("did_not_learn") or {}
    lines = [f"# {title}", "",
             f"{len(results)} evaluation runs. Cells: value ± std over seeds [95 % bootstrap CI]; "
             "`floor:` = random-init encoder of the same architecture, `ceiling:` = supervised encoder "
             "trained on the labels; `floor/` metrics and `random init` rows (grounding, diagnostics) = each "
             "method's own architecture with random weights, its floor for attention metrics. "
             "Labels merged over `@seedN` pretraining seeds show mean ± std over them.", ""]
    lines += summary_table(merged, verdicts)
    lines += paired_differences(results)
    lines += published_comparison(results)
    if demo:
        lines += demo_sections(demo, results, figs)
    lines += diagnostics_sections(results, figs)
    for task in sorted(merged, key=lambda t: TASK_ORDER.index(t) if t in TASK_ORDER else 99):
        if task == "diagnostics":
            continue
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
                             [g(m, "ci_high") for m in ms], f"{task}: {metric}", figs / f"{safe}.png", metric,
                             references=_references(task, metric, by_label_applicable))
            lines += [f"![{task} {metric}](figures/{path.name})", ""]
    lines += _explanations(results, figs, data, samples)
    lines += provenance_table(results)
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
    from reclf.evaluate.common import load_table, report_texts
    from reclf.evaluate.explain import explain_pictures
    from reclf.evaluate.features import prepare_image
    from reclf.evaluate.loading import image_size_of, load_model

    table = load_table(data)
    rows = table.df.head(samples)
    try:
        from reclf.evaluate.tasks.diagnostics import read_word_roles

        roles = read_word_roles(table.folder)
    except (FileNotFoundError, ValueError):  # real data: no word roles
        roles = {}
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
        texts = report_texts(rows, model)  # the sections the model was trained on, never the raw report
        for (_, row), report in zip(rows.iterrows(), texts, strict=True):
            image = prepare_image(table.folder / row["image_path"], size)
            sid = re.sub(r"[^A-Za-z0-9]+", "_", str(row["study_id"]))
            info = explain_pictures(model, image, report, figs / "explain", prefix=f"{safe}_{sid}_",
                                    title=f"{label} · {row['study_id']}", roles=roles.get(str(row["study_id"])))
            text = " ".join(report.split())  # one line: reports hold newlines
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
    from reclf.evaluate.provenance import provenance_table

    print("\n".join(provenance_table(results)))
    print(f"wrote {path} ({len(results)} runs)")
    return 0
