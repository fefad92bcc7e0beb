"""``results.json``: what every evaluation run writes, and how it is printed and read back.

One file per run, written atomically: the task, the metrics (each with its 95 % interval and,
for trained probes, mean +- std over seeds), the task's config, the model (path, method, sha256
of the weights), the data (path, rows used, bad rows with reasons), the seeds, and the provenance of
every number (:data:`PROVENANCE`: the hashes of the weights, the evaluated item list, the prompt file
and the report section rule).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reclf.evaluate.stats import Estimate
from reclf.utils.io import atomic_write_json

RESULTS_NAME = "results.json"
SCHEMA_VERSION = 1


@dataclass
class TaskResult:
    task: str
    metrics: dict[str, Estimate]
    config: dict[str, Any]
    model: dict[str, Any]
    data: dict[str, Any]
    seeds: list[int]
    extra: dict[str, Any] = field(default_factory=dict)  # per-class tables, curves, sample ids

    def to_dict(self) -> dict[str, Any]:
        import reclf

        return {
            "schema": SCHEMA_VERSION,
            "task": self.task,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "config": self.config,
            "model": self.model,
            "data": self.data,
            "seeds": self.seeds,
            "provenance": provenance(self.model, self.data, self.config),
            "extra": _clean(self.extra),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "reclf_version": reclf.__version__,
            "python": platform.python_version(),
        }


#: The hashes that say where a number comes from (``results.json`` -> ``provenance``; ``reclf report`` lists them).
PROVENANCE = {
    "model_weights": "sha256 of the weights file",
    "split_list": "sha256 of the ids of the items evaluated, in order (one per line)",
    "prompt_file": "sha256 of the prompt file (zero-shot)",
    "section_rule": "sha256 of the report sections the model reads + the section / cleaning code",
}


def provenance(model: dict[str, Any], data: dict[str, Any], config: dict[str, Any]) -> dict[str, str | None]:
    """The :data:`PROVENANCE` hashes of a result (``None`` where a task has no such input)."""
    prompt = config.get("prompt_file") if isinstance(config, dict) else None
    return {
        "model_weights": model.get("sha256"),
        "split_list": data.get("split_list_sha256"),
        "prompt_file": prompt.get("sha256") if isinstance(prompt, dict) else None,
        "section_rule": model.get("section_rule_sha256"),
    }


def per_item(ids: Any, values: Any) -> dict[str, list]:
    """The per-item values behind a mean metric (``extra["per_item"][metric]``), for paired comparisons
    of two models on the same items (:func:`reclf.evaluate.stats.paired_difference`)."""
    return {"ids": [str(i) for i in ids], "values": [float(v) for v in values]}


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str):
        try:
            obj = obj.item()
        except (ValueError, AttributeError):
            return str(obj)
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def write_results(result: TaskResult, out_dir: str | Path) -> Path:
    path = Path(out_dir) / RESULTS_NAME
    atomic_write_json(path, result.to_dict())
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.json (run `reclf evaluate TASK ... --out DIR` first)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); rerun the evaluation") from exc
    for key in ("task", "metrics", "model"):
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r}; not a reclf results file")
    data["_path"] = str(path)
    return data


def find_results(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Every results.json under the given files/folders (recursively), sorted by path."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif (p / RESULTS_NAME).is_file():
            found.append(p / RESULTS_NAME)
        elif p.is_dir():
            found.extend(sorted(p.rglob(RESULTS_NAME)))
        else:
            raise FileNotFoundError(f"{p}: no such results file or folder")
    return [read_results(f) for f in sorted(set(found))]


def format_table(result: TaskResult | dict[str, Any], digits: int = 3) -> str:
    """A plain-text table of one run's metrics (value ± std [95 % CI], n)."""
    metrics = result.metrics if isinstance(result, TaskResult) else result["metrics"]
    task = result.task if isinstance(result, TaskResult) else result["task"]
    rows = []
    for name, m in metrics.items():
        est = m if isinstance(m, Estimate) else _estimate(m)
        rows.append((name, est.fmt(digits), str(est.n)))
    w0 = max([len("metric")] + [len(r[0]) for r in rows])
    w1 = max([len("value ± std [95% CI]")] + [len(r[1]) for r in rows])
    lines = [f"task: {task}", f"{'metric':<{w0}}  {'value ± std [95% CI]':<{w1}}  n", "-" * (w0 + w1 + 8)]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def _estimate(m: dict[str, Any]) -> Estimate:
    def f(x: Any) -> float:
        return float("nan") if x is None else float(x)

    return Estimate(f(m.get("value")), f(m.get("ci_low")), f(m.get("ci_high")), int(m.get("n") or 0),
                    None if m.get("std") is None else float(m["std"]), m.get("seeds"))


def estimate_from_dict(m: dict[str, Any]) -> Estimate:
    return _estimate(m)


def result_rows(folder: str | Path) -> list[tuple[str, str, str, str]]:
    """``(task, metric, "value [95% CI]", file)`` of every ``results.json`` under ``folder`` (the model card's
    evaluation table); an unreadable file is listed as such, never skipped silently."""
    folder = Path(folder)
    rows = []
    for path in sorted(folder.rglob(RESULTS_NAME)):
        try:
            data = read_results(path)
            for name, m in data["metrics"].items():
                rows.append((data["task"], name, estimate_from_dict(m).fmt(3), str(path.relative_to(folder))))
        except (ValueError, KeyError, TypeError, OSError):
            rows.append(("?", "?", "unreadable results file", str(path.relative_to(folder))))
    return rows


def refresh_model_card(folder: str | Path) -> Path:
    """Rewrite the model card (``README.md``) of a saved model folder with the evaluation results found
    under it, keeping the card's training facts."""
    from reclf.methods.model_card import write_model_card

    return write_model_card(folder, results=result_rows(folder))
