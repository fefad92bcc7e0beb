"""Where every number comes from: the provenance hashes of each run, and the published numbers of GLoRIA, MGCA
and BioViL on the real protocols, shown beside ours by ``reclf report``.

The published numbers are data, copied cell by cell from a named table of a named paper (``Published.source``);
docs/evaluation.md (Published numbers) shows the same table. A protocol whose number could not be checked
against its source has no entry, and the report shows "—" there: no number is filled in from memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from reclf.evaluate.results import PROVENANCE, provenance

METHODS = ("GLoRIA", "MGCA", "BioViL")


@dataclass(frozen=True)
class Protocol:
    """A real-data protocol: the reclf task and metric that reproduce it, on tables of ``source``."""

    name: str
    task: str
    source: str  # the study table's ``source`` value (``covidx`` also matches ``covidx:<part>``)
    metric: str  # the metric key in results.json
    percent: bool = True  # published in %: ours is shown x 100


@dataclass(frozen=True)
class Published:
    protocol: str  # Protocol.name
    method: str
    value: float  # as printed in the source (percent where Protocol.percent)
    source: str  # paper + table


def _fractions(name: str, task: str, source: str, metric: str) -> list[Protocol]:
    return [Protocol(f"{name}, {f} labels", task, source, f"{f}/{metric}") for f in ("1%", "10%", "100%")]


PROTOCOLS: tuple[Protocol, ...] = (
    Protocol("CheXpert 5x200 zero-shot, accuracy", "zeroshot", "chexpert", "method/accuracy"),
    *_fractions("Linear probe CheXpert (5 labels), macro AUROC", "linear", "chexpert", "auroc"),
    *_fractions("Linear probe RSNA pneumonia, AUROC", "linear", "rsna", "auroc"),
    *_fractions("Linear probe COVIDx, accuracy", "linear", "covidx", "accuracy"),
    *_fractions("SIIM pneumothorax segmentation, Dice", "segment", "siim", "dice"),
    *_fractions("RSNA pneumonia segmentation, Dice", "segment", "rsna", "dice"),
    Protocol("MS-CXR phrase grounding, CNR", "phrase-grounding", "ms-cxr", "cnr", percent=False),
    Protocol("MS-CXR phrase grounding, mIoU", "phrase-grounding", "ms-cxr", "miou", percent=False),
)

MACO = ("'Enhancing representation in radiography-reports foundation model: a granular alignment algorithm "
        "using masked contrastive learning' (MaCo), Nat. Commun. 2024, Table 1, doi:10.1038/s41467-024-51749-0 "
        "(GLoRIA pretrained on CheXpert, as MGCA's Table 1 lists it)")

#: Only numbers read in their source. MGCA's own Table 1/3 values and BioViL's MS-CXR values are not here: they
#: could not be checked against the papers in this project (shared/reference/anchors.md marks them unverified).
PUBLISHED: tuple[Published, ...] = (
    Published("Linear probe CheXpert (5 labels), macro AUROC, 1% labels", "GLoRIA", 86.6, MACO),
    Published("Linear probe CheXpert (5 labels), macro AUROC, 10% labels", "GLoRIA", 87.8, MACO),
    Published("Linear probe CheXpert (5 labels), macro AUROC, 100% labels", "GLoRIA", 88.1, MACO),
    Published("Linear probe RSNA pneumonia, AUROC, 1% labels", "GLoRIA", 86.1, MACO),
    Published("Linear probe RSNA pneumonia, AUROC, 10% labels", "GLoRIA", 88.0, MACO),
    Published("Linear probe RSNA pneumonia, AUROC, 100% labels", "GLoRIA", 88.6, MACO),
)


def published_value(protocol: str, method: str) -> Published | None:
    return next((p for p in PUBLISHED if p.protocol == protocol and p.method == method), None)


def _sources(result: dict[str, Any]) -> set[str]:
    return {s.split(":", 1)[0] for s in result.get("data", {}).get("sources") or []}


def _ours(m: dict[str, Any] | None, percent: bool) -> str:
    if not m or m.get("value") is None or (isinstance(m["value"], float) and math.isnan(m["value"])):
        return "—"
    k = 100.0 if percent else 1.0
    text = f"{k * m['value']:.1f}" if percent else f"{m['value']:.3f}"
    if m.get("ci_low") is not None and m.get("ci_high") is not None:
        lo, hi = k * m["ci_low"], k * m["ci_high"]
        text += f" [{lo:.1f}, {hi:.1f}]" if percent else f" [{lo:.2f}, {hi:.2f}]"
    return text


def published_comparison(results: list[dict[str, Any]]) -> list[str]:
    """A Markdown section: for each real protocol some run reproduces, our number(s) beside the published ones."""
    rows = []
    cited: dict[str, int] = {}
    for proto in PROTOCOLS:
        runs = [r for r in results if r.get("task") == proto.task and proto.source in _sources(r)]
        if not runs:
            continue
        ours = "; ".join(f"{r['model'].get('label')}: {_ours(r['metrics'].get(proto.metric), proto.percent)}"
                         for r in runs)
        cells = []
        for method in METHODS:
            pub = published_value(proto.name, method)
            if pub is None:
                cells.append("—")
                continue
            ref = cited.setdefault(pub.source, len(cited) + 1)
            cells.append(f"{pub.value:g} [{ref}]")
        rows.append(f"| {proto.name} | {ours} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    lines = ["## published numbers on the same protocols", "",
             "Ours: value [95 % CI], × 100 where the papers print percent. Published: as printed in the cited table "
             "(their splits, image sizes and encoders differ from a small reclf run: a reference point, not a "
             "ranking). — : no number that could be checked against its source (docs/evaluation.md).", "",
             "| protocol | ours | " + " | ".join(METHODS) + " |", "|---|---|" + "---|" * len(METHODS), *rows, ""]
    lines += [f"[{n}] {src}" for src, n in cited.items()]
    return lines + [""] if cited else lines


def _short(h: Any) -> str:
    return str(h)[:12] if h else "—"


def provenance_table(results: list[dict[str, Any]]) -> list[str]:
    """A Markdown section: the provenance hashes (first 12 hex digits) of every run."""
    if not results:
        return []
    names = list(PROVENANCE)
    lines = ["## provenance", "",
             "The first 12 hex digits of each run's sha256 hashes (full hashes: `provenance` in its results.json): "
             + "; ".join(f"{k.replace('_', ' ')} = {v}" for k, v in PROVENANCE.items()) + ". — : the task has no "
             "such input, or the run predates the record.", "",
             "| run | task | model | " + " | ".join(n.replace("_", " ") for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for r in results:
        prov = r.get("provenance") or provenance(r.get("model", {}), r.get("data", {}), r.get("config", {}))
        run = str(r.get("_path", "?"))
        lines.append(f"| `{run}` | {r.get('task')} | {r.get('model', {}).get('label')} | "
                     + " | ".join(_short(prov.get(n)) for n in names) + " |")
    return lines + [""]
