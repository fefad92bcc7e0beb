"""IU X-ray (OpenI): the report XMLs (``ecgen-radiology/*.xml``, or ``NLMCXR_reports.tgz`` read in place) with the
NLMCXR PNG images, or the R2Gen layout (``annotation.json`` + ``images/<id>/<n>.png``).

* **OpenI layout.** Each XML is one report (``uId`` ``CXR123``) with FINDINGS and IMPRESSION (``AbstractText``),
  MeSH terms (``<major>`` / ``<automatic>``) and the ids of its images (``parentImage``; file ``<id>.png``, in
  ``NLMCXR_png/``, ``images/`` or the root). One row per image: ``study_id`` = image id, ``patient_id`` = report id
  (the collection has one de-identified study per patient). Views are not in the XMLs: ``UNKNOWN``. Reports with
  neither section, and reports without images, are dropped and counted. Split: seeded by report, 70/10/20.
* **R2Gen layout.** ``annotation.json`` = ``{"train"|"val"|"test": [{"id", "report", "image_path": [...]}]}``;
  the given split is kept; the cleaned report text is the findings. When the XMLs are also present their MeSH
  labels are joined by report id.
* **Labels** from MeSH ``<major>`` terms by :data:`MESH_TO_CHEXPERT` (the term before the first ``/``): a mapped
  term sets its label to 1; ``normal`` sets No Finding = 1 when no other label is positive; nothing is set to 0.
"""

from __future__ import annotations

import json
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reclf.data.sources.common import DropLog, PrepareOptions, SourceLayoutError, SourceTable, canonical_frame
from reclf.data.studies import CHEXPERT_LABELS, patient_split

# MeSH major term (lower case, text before the first "/") -> CheXpert observation.
MESH_TO_CHEXPERT: dict[str, str] = {
    "cardiomegaly": "Cardiomegaly",
    "pulmonary atelectasis": "Atelectasis",
    "atelectasis": "Atelectasis",
    "pleural effusion": "Pleural Effusion",
    "opacity": "Lung Opacity",
    "airspace disease": "Lung Opacity",
    "infiltrate": "Lung Opacity",
    "density": "Lung Opacity",
    "consolidation": "Consolidation",
    "pneumonia": "Pneumonia",
    "pulmonary edema": "Edema",
    "pulmonary congestion": "Edema",
    "pneumothorax": "Pneumothorax",
    "fractures, bone": "Fracture",
    "nodule": "Lung Lesion",
    "mass": "Lung Lesion",
    "lung neoplasms": "Lung Lesion",
    "catheters, indwelling": "Support Devices",
    "tube, inserted": "Support Devices",
    "implanted medical device": "Support Devices",
    "medical device": "Support Devices",
    "stents": "Support Devices",
    "pacemaker, artificial": "Support Devices",
    "mediastinum": "Enlarged Cardiomediastinum",  # only with an "enlarged"/"widened" qualifier, see mesh_labels
    "thickening": "Pleural Other",  # only with a "pleura" qualifier
}
_QUALIFIED = {"mediastinum": ("enlarged", "widened", "wide"), "thickening": ("pleura",)}
IMAGE_DIRS = ("NLMCXR_png", "images", ".")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
R2GEN_SPLITS = {"train": "train", "val": "valid", "valid": "valid", "test": "test"}


@dataclass
class IUReport:
    report_id: str
    findings: str
    impression: str
    images: list[str]
    mesh: list[str]


def mesh_labels(terms: list[str]) -> dict[str, float]:
    """CheXpert-style labels (1 or NaN) from MeSH major terms, by :data:`MESH_TO_CHEXPERT`."""
    out = {c: np.nan for c in CHEXPERT_LABELS}
    normal = False
    for term in terms:
        parts = [p.strip().lower() for p in term.split("/")]
        head = parts[0]
        if head == "normal":
            normal = True
            continue
        label = MESH_TO_CHEXPERT.get(head)
        if label is None:
            continue
        if head in _QUALIFIED and not any(q in p for p in parts[1:] for q in _QUALIFIED[head]):
            continue
        out[label] = 1.0
    if normal and not any(v == 1.0 for v in out.values()):
        out["No Finding"] = 1.0
    return out


def _text(el: ET.Element | None) -> str:
    return " ".join((el.text or "").split()) if el is not None else ""


def parse_xml(data: bytes, name: str) -> IUReport:
    """One OpenI report XML -> :class:`IUReport` (raises ``ET.ParseError`` for broken XML)."""
    root = ET.fromstring(data)
    uid = root.find("uId")
    report_id = uid.get("id", "") if uid is not None else ""
    if not report_id:
        report_id = "CXR" + re.sub(r"\D", "", Path(name).stem)
    sections = {a.get("Label", "").upper(): _text(a) for a in root.iter("AbstractText")}
    mesh = [_text(m) for m in root.iter("major") if _text(m)]
    images = [p.get("id", "") for p in root.iter("parentImage") if p.get("id")]
    return IUReport(report_id, sections.get("FINDINGS", ""), sections.get("IMPRESSION", ""), images, mesh)


def iter_xml_files(root: Path) -> Iterator[tuple[str, bytes]]:
    folder = root / "ecgen-radiology"
    if folder.is_dir():
        for path in sorted(folder.glob("*.xml")):
            yield path.name, path.read_bytes()
        return
    tgz = next((p for p in (root / "NLMCXR_reports.tgz", root / "NLMCXR_reports.tar.gz") if p.is_file()), None)
    if tgz is None:
        raise SourceLayoutError(
            f"{root} does not look like IU X-ray: expected ecgen-radiology/ (the OpenI report XMLs), "
            "NLMCXR_reports.tgz, or the R2Gen annotation.json"
        )
    with tarfile.open(tgz, "r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.isfile() and member.name.endswith(".xml"):
                fh = tar.extractfile(member)
                if fh is not None:
                    yield Path(member.name).name, fh.read()


def read_reports(root: Path, drops: DropLog) -> list[IUReport]:
    reports, broken = [], []
    for name, data in iter_xml_files(root):
        try:
            reports.append(parse_xml(data, name))
        except ET.ParseError as exc:
            broken.append(f"{name}: {exc}")
    drops.bad("broken_xml", "a report XML that does not parse", len(broken), broken)
    return reports


def parse(opts: PrepareOptions) -> SourceTable:
    root = Path(opts.root).resolve()
    if (root / "annotation.json").is_file():
        return parse_r2gen(root, opts)
    drops = DropLog(opts.strict)
    reports = read_reports(root, drops)
    n_read = len(reports)
    no_text = [r.report_id for r in reports if not r.findings and not r.impression]
    drops.bad("report_no_sections", "a report with neither FINDINGS nor IMPRESSION", len(no_text), no_text)
    no_image = [r.report_id for r in reports if (r.findings or r.impression) and not r.images]
    drops.filtered("report_without_image", "a report with no parentImage", len(no_image), no_image)
    reports = [r for r in reports if (r.findings or r.impression) and r.images]
    image_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir() and any((root / d).glob("*.png"))), root)
    splits = patient_split([r.report_id for r in reports], SPLIT_FRACTIONS, seed=opts.seed)
    rows = []
    for r in reports:
        labels = mesh_labels(r.mesh)
        for image in r.images:
            rows.append(
                {
                    "study_id": image,
                    "patient_id": r.report_id,
                    "report": " ".join(
                        x
                        for x in (
                            f"FINDINGS: {r.findings}" if r.findings else "",
                            f"IMPRESSION: {r.impression}" if r.impression else "",
                        )
                        if x
                    ),
                    "findings": r.findings,
                    "impression": r.impression,
                    "split": splits[r.report_id],
                    "source_path": str(image_dir / f"{image}.png"),
                    "annotations": json.dumps({"mesh": r.mesh}),
                    **labels,
                }
            )
    frame = pd.DataFrame(rows)
    dup = frame["study_id"].duplicated() if len(frame) else pd.Series([], dtype=bool)
    drops.bad("duplicate_image", "an image id listed by two reports", int(dup.sum()), frame.loc[dup, "study_id"])
    frame = frame[~dup]
    df = canonical_frame(len(frame), **{c: frame[c] for c in frame.columns})
    df["source"] = "iu-xray"
    return SourceTable("iu-xray", df, drops, rows_read=n_read, info={"layout": "openi", "n_reports": len(reports)})


def parse_r2gen(root: Path, opts: PrepareOptions) -> SourceTable:
    drops = DropLog(opts.strict)
    ann_path = root / "annotation.json"
    try:
        ann = json.loads(ann_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceLayoutError(f"{ann_path} is not a JSON annotation file: {exc}") from exc
    mesh: dict[str, list[str]] = {}
    if (root / "ecgen-radiology").is_dir() or (root / "NLMCXR_reports.tgz").is_file():
        mesh = {r.report_id: r.mesh for r in read_reports(root, drops)}
    rows, bad, n_read = [], [], 0
    for split_name, items in ann.items():
        split = R2GEN_SPLITS.get(str(split_name).lower())
        if split is None or not isinstance(items, list):
            continue
        for item in items:
            n_read += 1
            if not isinstance(item, dict) or not item.get("id") or not item.get("image_path"):
                bad.append(str(item)[:60])
                continue
            report = " ".join(str(item.get("report", "")).split())
            report_id = str(item["id"]).split("_")[0]
            labels = mesh_labels(mesh.get(report_id, []))
            for k, rel in enumerate(item["image_path"]):
                rows.append(
                    {
                        "study_id": f"{item['id']}/{k}",
                        "patient_id": str(item["id"]),
                        "report": report,
                        "findings": report,
                        "split": split,
                        "source_path": str(root / "images" / rel),
                        **labels,
                    }
                )
    drops.bad("malformed_annotation", "an annotation without id or image_path", len(bad), bad)
    frame = pd.DataFrame(rows)
    empty = frame["report"] == "" if len(frame) else pd.Series([], dtype=bool)
    drops.bad(
        "report_no_sections", "an annotation with an empty report", int(empty.sum()), frame.loc[empty, "study_id"]
    )
    frame = frame[~empty]
    df = canonical_frame(len(frame), **{c: frame[c] for c in frame.columns})
    df["source"] = "iu-xray"
    return SourceTable("iu-xray", df, drops, rows_read=n_read, info={"layout": "r2gen", "mesh_joined": bool(mesh)})
