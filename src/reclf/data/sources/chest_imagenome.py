"""Chest ImaGenome (PhysioNet) gold set + the user's MIMIC-CXR-JPG images -> finding-anatomy-side triples per image.

* The gold scene-graph annotations as distributed: ``gold_dataset/gold_attributes_relations_500pts_500studies1st.txt``
  in ``--root`` (tab-separated; one row per (sentence, anatomical region, attribute) with the columns
  ``patient_id, study_id, image_id`` (``DICOM_ID.dcm``), ``row_id``, ``sentence``, ``bbox`` (the region name:
  ``left lower lung zone``, ``right costophrenic angle``, ...), ``label_name`` (``atelectasis``,
  ``lung opacity``, ...), ``categoryID`` (``anatomicalfinding``, ``disease``, ``nlp``, ``tubesandlines``,
  ...) and ``context`` (``yes``: the report asserts it, ``no``: it denies it). Without the gold file the
  scene graphs ``*_SceneGraph.json`` found below ``--root`` are read instead (the silver set's
  ``silver_dataset/scene_graph/``: ``attributes[*].bbox_name`` with ``attributes`` lists of
  ``"category|yes|label"`` strings and their ``phrases``).
* Images from ``--mimic-jpg`` (default ``--root``): ``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg``.
* A **triple** is ``(finding, anatomy, side)``: an asserted (``yes``) ``anatomicalfinding`` or ``disease``
  attribute on a left or right lung region (``LUNG_REGIONS``: lung, apical / upper / mid / lower lung zone,
  hilar structures, costophrenic angle, hemidiaphragm). Denied attributes, other categories, midline and
  unnamed regions are counted as filtered, and a repeated triple of an image is kept once.
* One row per image with at least one triple: ``annotations`` = its triples (``finding``, ``anatomy``,
  ``side``, ``bbox``) in report order, at most ``MAX_TRIPLES``; ``report`` = the image's gold sentences;
  ``task`` = ``single`` (one triple) or ``binding`` (several); ``class`` = the finding (``binding`` when
  several); split ``test`` (the gold set is a test set).
* ``candidates.csv`` (the format of SynthCXR's ``relations/``, read by ``reclf evaluate relations``): per
  image the true caption (one sentence per triple, "Atelectasis in the left lower lung zone.") and foils
  that move one finding (:func:`relation_candidates`): ``side`` (the other side, same region),
  ``location`` (the same side, another lung level: upper / mid / lower) and, with two triples or more,
  ``swap_location`` (two findings exchange their regions: the same words, another binding). A foil is
  never a statement the gold set supports: a finding moved onto a level of a side where the image has it
  is not a foil.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reclf.data.sources.common import (
    DropLog,
    PrepareOptions,
    SourceLayoutError,
    SourceTable,
    canonical_frame,
    read_csv_counting_bad,
    require_columns,
)
from reclf.utils.seed import rng

GOLD_FILE = "gold_dataset/gold_attributes_relations_500pts_500studies1st.txt"
GOLD_COLUMNS = ("patient_id", "study_id", "image_id", "bbox", "label_name", "categoryID", "context")
FINDING_CATEGORIES = ("anatomicalfinding", "disease")
#: lung regions with a left and a right twin, and the lung level (upper / mid / lower) each one covers
LUNG_REGIONS: dict[str, tuple[str, ...]] = {
    "lung": ("upper", "mid", "lower"),
    "apical zone": ("upper",),
    "upper lung zone": ("upper",),
    "mid lung zone": ("mid",),
    "hilar structures": ("mid",),
    "lower lung zone": ("lower",),
    "costophrenic angle": ("lower",),
    "hemidiaphragm": ("lower",),
}
#: where a finding moved to another level goes (a zone of that level)
LEVEL_REGION = {"upper": "upper lung zone", "mid": "mid lung zone", "lower": "lower lung zone"}
MAX_TRIPLES = 3
_SIDED = re.compile(r"^(left|right) (.+)$")


@dataclass(frozen=True)
class Triple:
    finding: str
    side: str  # left | right
    anatomy: str  # a key of LUNG_REGIONS

    @property
    def bbox(self) -> str:
        return f"{self.side} {self.anatomy}"

    def sentence(self) -> str:
        return f"{self.finding[:1].upper()}{self.finding[1:]} in the {self.bbox}."


def parse_region(bbox: str) -> tuple[str, str] | None:
    """``"left lower lung zone"`` -> ``("left", "lower lung zone")``; None for midline or other regions."""
    m = _SIDED.match(str(bbox).strip().lower())
    if not m or m.group(2) not in LUNG_REGIONS:
        return None
    return m.group(1), m.group(2)


def _covered(triples: Iterable[Triple]) -> set[tuple[str, str, str]]:
    """(finding, side, level) the image's true triples assert."""
    return {(t.finding, t.side, level) for t in triples for level in LUNG_REGIONS[t.anatomy]}


def supported(t: Triple, covered: set[tuple[str, str, str]]) -> bool:
    """True when the gold set asserts ``t.finding`` on any level of ``t``'s region (so ``t`` is not a foil)."""
    return any((t.finding, t.side, level) in covered for level in LUNG_REGIONS[t.anatomy])


def caption(triples: list[Triple]) -> str:
    return " ".join(t.sentence() for t in triples)


def relation_candidates(study_id: str, triples: list[Triple], seed: int = 0) -> list[tuple[str, bool, str]]:
    """``(text, is_correct, contrast)``: the true caption and at most one foil per contrast (seeded per study).

    ``side``: one finding on the other side (same region); ``location``: one finding on another level of
    the same side (moved to that level's lung zone); ``swap_location``: two findings of different regions
    exchange them. Each foil changes one binding and is checked against every true triple of the image.
    """
    gen = rng(seed, "chest-imagenome-foils", study_id)
    cov = _covered(triples)
    out: list[tuple[str, bool, str]] = [(caption(triples), True, "none")]

    def first_valid(options: list[list[Triple]]) -> list[Triple] | None:
        for k in gen.permutation(len(options)):
            cand = options[int(k)]
            changed = [c for c, t in zip(cand, triples) if c != t]
            if changed and not any(supported(c, cov) for c in changed):
                return cand
        return None

    flip = {"left": "right", "right": "left"}
    sides = [[*triples[:i], Triple(t.finding, flip[t.side], t.anatomy), *triples[i + 1:]]
             for i, t in enumerate(triples)]
    moves = []
    for i, t in enumerate(triples):
        for level, region in LEVEL_REGION.items():
            if level not in LUNG_REGIONS[t.anatomy]:
                moves.append([*triples[:i], Triple(t.finding, t.side, region), *triples[i + 1:]])
    swaps = []
    for i in range(len(triples)):
        for j in range(i + 1, len(triples)):
            a, b = triples[i], triples[j]
            if a.finding != b.finding and a.bbox != b.bbox:
                new = list(triples)
                new[i], new[j] = Triple(a.finding, b.side, b.anatomy), Triple(b.finding, a.side, a.anatomy)
                swaps.append(new)
    for contrast, options in (("side", sides), ("location", moves), ("swap_location", swaps)):
        chosen = first_valid(options)
        if chosen is not None:
            out.append((caption(chosen), False, contrast))
    return out


def candidates_frame(triples_of: dict[str, list[Triple]], seed: int = 0) -> pd.DataFrame:
    """``study_id, text, is_correct, contrast`` for every image (SynthCXR's ``candidates.csv`` format)."""
    rows = [{"study_id": sid, "text": text, "is_correct": int(ok), "contrast": contrast}
            for sid, triples in triples_of.items() for text, ok, contrast in relation_candidates(sid, triples, seed)]
    return pd.DataFrame(rows, columns=["study_id", "text", "is_correct", "contrast"])


def triples_from_annotations(text: str) -> list[Triple]:
    """The triples of a prepared row's ``annotations`` (what :func:`parse` wrote)."""
    out = []
    for a in json.loads(text or "[]"):
        if isinstance(a, dict) and a.get("anatomy") in LUNG_REGIONS and a.get("side") in ("left", "right"):
            out.append(Triple(str(a["finding"]), str(a["side"]), str(a["anatomy"])))
    return out


# --- reading ----------------------------------------------------------------------------------------------


def _sent_order(row_id: str) -> float:
    try:
        return float(str(row_id).rsplit("|", 1)[-1])
    except ValueError:
        return float("inf")


def read_gold(path: Path, drops: DropLog) -> pd.DataFrame:
    """The gold attribute rows as ``dicom_id, patient_id, study_id, order, sentence, bbox, label, category,
    context`` (stripped, lower-cased where it is vocabulary); rows without ids counted and dropped."""
    df = read_csv_counting_bad(path, drops, delimiter="\t")
    require_columns(df, GOLD_COLUMNS, path)
    out = pd.DataFrame({
        "dicom_id": df["image_id"].astype(str).str.strip().str.replace(r"\.dcm$", "", regex=True),
        "patient_id": df["patient_id"].astype(str).str.strip(),
        "study_id": df["study_id"].astype(str).str.strip(),
        "order": [_sent_order(r) for r in df.get("row_id", pd.Series("", index=df.index))],
        "sentence": df.get("sentence", pd.Series("", index=df.index)).astype(str).str.strip(),
        "bbox": df["bbox"].astype(str).str.strip().str.lower(),
        "label": df["label_name"].astype(str).str.strip().str.lower(),
        "category": df["categoryID"].astype(str).str.strip().str.lower(),
        "context": df["context"].astype(str).str.strip().str.lower(),
    })
    bad = ~(out["patient_id"].str.fullmatch(r"\d+") & out["study_id"].str.fullmatch(r"\d+")) | (out["dicom_id"] == "")
    drops.bad("malformed_row", f"{path.name}: a row without an image_id or with a non-numeric patient/study id",
              int(bad.sum()), [f"line {n}" for n in np.asarray(df.attrs.get("lines", []))[bad.to_numpy()][:5]])
    return out[~bad].reset_index(drop=True)


def read_scene_graphs(paths: list[Path], drops: DropLog) -> pd.DataFrame:
    """The same rows from ``*_SceneGraph.json`` files (one per image); unreadable files counted and skipped."""
    rows, bad = [], []
    for path in paths:
        try:
            g = json.loads(path.read_text(encoding="utf-8"))
            dicom = str(g.get("image_id") or path.name[: -len("_SceneGraph.json")])
            pid, sid = str(g["patient_id"]), str(g["study_id"])
            for k, entry in enumerate(g.get("attributes", [])):
                bbox = str(entry.get("bbox_name", "")).strip().lower()
                phrases = entry.get("phrases", []) or []
                for p_idx, group in enumerate(entry.get("attributes", []) or []):
                    for item in group if isinstance(group, list) else [group]:
                        parts = [s.strip().lower() for s in str(item).split("|", 2)]
                        if len(parts) != 3:
                            continue
                        sentence = str(phrases[p_idx]).strip() if p_idx < len(phrases) else ""
                        rows.append((dicom, pid, sid, float(k), sentence, bbox, parts[2], parts[0], parts[1]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            bad.append(f"{path.name}: {exc}")
    drops.bad("unreadable_scene_graph", "a *_SceneGraph.json that is not a Chest ImaGenome scene graph", len(bad), bad)
    return pd.DataFrame(rows, columns=["dicom_id", "patient_id", "study_id", "order", "sentence", "bbox", "label",
                                       "category", "context"])


def image_triples(rows: pd.DataFrame, drops: DropLog) -> dict[str, list[Triple]]:
    """Asserted finding triples per image in report order (filters counted by reason)."""
    finding = rows["category"].isin(FINDING_CATEGORIES)
    drops.filtered("not_a_finding", f"an attribute of another category than {', '.join(FINDING_CATEGORIES)}",
                   int((~finding).sum()))
    rows = rows[finding]
    denied = rows["context"] != "yes"
    drops.filtered("denied_finding", "a finding the report denies (context = no)", int(denied.sum()))
    rows = rows[~denied]
    regions = rows["bbox"].map(parse_region)
    drops.filtered("not_a_sided_lung_region", "a finding on a midline, unnamed or non-lung region", int(
        regions.isna().sum()), rows.loc[regions.isna(), "bbox"].drop_duplicates().head(5))
    rows = rows[regions.notna()].assign(region=regions[regions.notna()]).sort_values(["dicom_id", "order"],
                                                                                      kind="stable")
    out: dict[str, list[Triple]] = {}
    repeated = cut = 0
    for dicom, g in rows.groupby("dicom_id", sort=True):
        seen: list[Triple] = []
        for label, (side, anatomy) in zip(g["label"], g["region"]):
            t = Triple(label, side, anatomy)
            if t in seen:
                repeated += 1
            else:
                seen.append(t)
        if len(seen) > MAX_TRIPLES:
            cut += len(seen) - MAX_TRIPLES
        out[str(dicom)] = seen[:MAX_TRIPLES]
    drops.note("repeated_triples_merged", repeated)
    drops.note(f"triples_beyond_{MAX_TRIPLES}_per_image_left_out", cut)
    return out


def parse(opts: PrepareOptions) -> SourceTable:
    root = Path(opts.root).resolve()
    drops = DropLog(opts.strict)
    gold = root / GOLD_FILE
    if gold.is_file():
        rows = read_gold(gold, drops)
        n_read, source = len(rows), str(gold)
    else:
        graphs = sorted(root.rglob("*_SceneGraph.json"))
        if not graphs:
            raise SourceLayoutError(f"{root} does not look like Chest ImaGenome: expected {GOLD_FILE} (or "
                                    "*_SceneGraph.json files) below it; point --root at the chest-imagenome folder")
        rows = read_scene_graphs(graphs, drops)
        n_read, source = len(graphs), f"{len(graphs)} scene graphs below {root}"
    ids = rows.drop_duplicates("dicom_id").set_index("dicom_id")[["patient_id", "study_id"]]
    sentences = {d: " ".join(dict.fromkeys(s for s in g.sort_values("order", kind="stable")["sentence"] if s))
                 for d, g in rows.groupby("dicom_id")}
    triples_of = image_triples(rows, drops)
    no_triple = sorted(set(ids.index) - set(triples_of))
    drops.filtered("image_without_triple", "an image without an asserted finding on a left/right lung region",
                   len(no_triple), no_triple[:5])
    dicoms = sorted(triples_of)
    mimic = Path(opts.get("mimic_jpg", root)).resolve()
    pids = [str(ids.loc[d, "patient_id"]) for d in dicoms]
    sids = [str(ids.loc[d, "study_id"]) for d in dicoms]
    reports = [sentences.get(d) or caption(triples_of[d]) for d in dicoms]
    df = canonical_frame(
        len(dicoms),
        study_id=dicoms,
        patient_id=pids,
        report=reports,
        findings=reports,
        split="test",
        source_path=[str(mimic / "files" / f"p{p[:2]}" / f"p{p}" / f"s{s}" / f"{d}.jpg")
                     for d, p, s in zip(dicoms, pids, sids)],
    )
    df["mimic_study_id"] = sids
    df["task"] = ["single" if len(triples_of[d]) == 1 else "binding" for d in dicoms]
    df["class"] = [triples_of[d][0].finding if len(triples_of[d]) == 1 else "binding" for d in dicoms]
    df["annotations"] = [json.dumps([{"finding": t.finding, "anatomy": t.anatomy, "side": t.side, "bbox": t.bbox}
                                     for t in triples_of[d]]) for d in dicoms]
    df["source"] = "chest-imagenome"
    cands = candidates_frame({d: triples_of[d] for d in dicoms}, opts.seed)
    drops.note("foils_by_contrast", {k: int(v) for k, v in cands.loc[cands["is_correct"] == 0, "contrast"]
                                     .value_counts().sort_index().items()})
    if not (mimic / "files").is_dir() and not opts.metadata_only:
        raise SourceLayoutError(f"{mimic} has no files/ folder; pass --mimic-jpg, the MIMIC-CXR-JPG folder that "
                                "holds files/pXX/...")
    return SourceTable("chest-imagenome", df, drops, rows_read=n_read,
                       info={"annotations": source, "mimic_jpg": str(mimic)},
                       id_lists={"candidates.csv": cands.to_csv(index=False)})
