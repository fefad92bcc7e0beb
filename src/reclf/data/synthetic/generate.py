"""SynthCXR generator: study specs -> images, masks, reports, labels -> canonical-table folders.

Layout of ``out/`` (each set is a canonical study table folder, paths relative to it)::

    manifest.json            generator version, seed, config, counts per set/finding/side/zone/split
    preview.png              with preview=True: montage with mask outlines and report excerpts
    pretrain/                paired corpus, train/valid/test by patient
    zeroshot_5x200/          5 classes x per_class, one finding each, `class` column
    retrieval_8x200/         8 classes x per_class (incl. No Finding, Pneumothorax), `class` column
    segmentation/            pneumothorax / opacity targets (`task`), positives = negatives, splits
    classification/          multi-label set for linear probing, splits by patient
    relations/               per_class one-finding studies + per_class binding studies (2-3 findings),
                             candidates.csv (true caption and foils), caption_roles.jsonl; valid/test

Determinism: every study's randomness comes from ``reclf.utils.seed.rng(seed, set, index)``;
specs are drawn in the main process and rendered by ``imap`` in order, so the bytes written do
not depend on the number of workers. The whole folder is built under a temporary name and
renamed at the end (``atomic_dir``), so an interrupted run never leaves a complete-looking table.
"""

from __future__ import annotations

import json
import multiprocessing
import struct
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reclf.data.studies import CHEXPERT_LABELS, patient_split, write_studies
from reclf.data.synthetic.anatomy import (
    Anatomy,
    expose,
    make_grid,
    render_anatomy,
    sample_anatomy,
    sample_patient,
    with_cardiomegaly,
)
from reclf.data.synthetic.findings import FindingSpec, render_finding
from reclf.data.synthetic.report_text import (
    Report,
    binding_candidates,
    binding_caption,
    caption_tagged,
    compose_report,
    relation_candidates,
    word_roles,
)
from reclf.data.synthetic.vocab import (
    CHEXPERT_LABEL,
    DEVICE_KINDS,
    FINDING_OF_LABEL,
    FINDING_SIDES,
    FINDING_ZONES,
    OPACITY_FINDINGS,
    RELATIONAL_FINDINGS,
    RETRIEVAL_CLASSES,
    SEVERITIES,
    ZEROSHOT_CLASSES,
)
from reclf.utils.io import atomic_dir, atomic_write_json
from reclf.utils.seed import rng as derive_rng

GENERATOR_VERSION = "synthcxr-1.2"
SIZE_RANGE = (64, 512)
N_RANGE = (20, 1_000_000)
PER_CLASS_RANGE = (2, 10_000)
WORKERS_RANGE = (1, 256)

#: Set folder name -> short RNG key (``seed.rng`` reads the first 8 bytes of a string key).
SET_KEYS: dict[str, str] = {
    "pretrain": "pretrain",
    "zeroshot_5x200": "zeroshot",
    "retrieval_8x200": "retrieve",
    "segmentation": "segment",
    "classification": "classify",
    "relations": "relation",
}
#: Layering order: later findings draw over earlier ones.
RENDER_ORDER = (
    "cardiomegaly",
    "edema",
    "pleural_effusion",
    "consolidation",
    "pneumonia",
    "atelectasis",
    "lung_lesion",
    "pneumothorax",
    "support_devices",
)
#: General finding frequencies (pretraining and classification sets) among abnormal studies.
FINDING_WEIGHTS: dict[str, float] = {
    "atelectasis": 0.16,
    "cardiomegaly": 0.12,
    "consolidation": 0.10,
    "edema": 0.08,
    "pleural_effusion": 0.16,
    "pneumothorax": 0.10,
    "pneumonia": 0.10,
    "lung_lesion": 0.10,
    "support_devices": 0.08,
}
P_NORMAL = 0.3
P_HEDGE = 0.1
P_AP = 0.3


# --------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class StudySpec:
    """Everything needed to render one study (images, masks, report) deterministically."""

    study_id: str
    patient_id: str
    findings: tuple[FindingSpec, ...] = ()
    view: str = "PA"
    patient_seed: int = 0
    seed: int = 0
    prior: bool = False
    split: str = "test"
    cls: str = ""
    task: str = ""


@dataclass
class RenderedStudy:
    """One rendered study: 8-bit image, one exact mask per finding (same order), report, anatomy."""

    spec: StudySpec
    image: np.ndarray  # uint8 [S, S]
    masks: list[np.ndarray]  # bool [S, S] per spec.findings
    report: Report
    anatomy: Anatomy
    thorax: np.ndarray  # bool [S, S]
    lungs: dict[str, np.ndarray]  # patient side -> bool [S, S]


def render_study(spec: StudySpec, size: int, fallback: bool = False) -> RenderedStudy:
    """Render ONE study from its spec (pure function of ``spec``, ``size`` and ``fallback``).

    ``fallback``: place findings on pixels of the rendered lung (``findings._place_on_pixels``), which
    cannot leave a mask empty; :func:`render_study_checked` uses it only when the usual sampling failed.
    """
    if not SIZE_RANGE[0] <= size <= SIZE_RANGE[1]:
        raise ValueError(f"size must be between {SIZE_RANGE[0]} and {SIZE_RANGE[1]} pixels, got {size}")
    rng = np.random.default_rng([spec.seed, 0])
    anat = sample_anatomy(sample_patient(np.random.default_rng(spec.patient_seed)), rng, spec.view)
    for f in spec.findings:
        if f.finding == "cardiomegaly":
            anat = with_cardiomegaly(anat, f.severity)
    grid = make_grid(size, anat.theta)
    layers = render_anatomy(anat, grid)
    masks: list[np.ndarray | None] = [None] * len(spec.findings)
    order = sorted(range(len(spec.findings)), key=lambda i: RENDER_ORDER.index(spec.findings[i].finding))
    for i in order:
        masks[i] = render_finding(
            spec.findings[i], anat, grid, layers, np.random.default_rng([spec.seed, 1, i]), fallback=fallback
        )
    image = expose(layers.density, anat, np.random.default_rng([spec.seed, 2]))
    report = compose_report(
        list(spec.findings), spec.view, anat.low_volumes, spec.prior, np.random.default_rng([spec.seed, 3])
    )
    return RenderedStudy(
        spec=spec,
        image=np.rint(image * np.float32(255.0)).astype(np.uint8),  # expose() clips to [0, 1]
        masks=[m for m in masks if m is not None],
        report=report,
        anatomy=anat,
        thorax=layers.thorax,
        lungs=layers.lungs,
    )


def render_study_checked(spec: StudySpec, size: int, attempts: int = 8) -> RenderedStudy:
    """:func:`render_study`, redrawing the study's seed if a finding's mask came out empty.

    After ``attempts`` draws (an enlarged heart can cover almost all of the left lower zone, so every
    random placement may miss the lung) the study is rendered from its own seed with the findings placed
    on pixels of the rendered lung, which cannot fail. Studies that succeeded on a draw keep exactly the
    bytes they had before this fallback existed; one unlucky draw never ends a generation.
    """
    for attempt in range(attempts):
        trial = (
            spec if attempt == 0 else replace(spec, seed=int(derive_rng(spec.seed, "retry", attempt).integers(2**62)))
        )
        out = render_study(trial, size)
        if all(m.any() for m in out.masks):
            return out
    out = render_study(spec, size, fallback=True)
    if not all(m.any() for m in out.masks):  # a bug guard: the pixel placement covers at least one pixel
        raise RuntimeError(f"{spec.study_id}: a finding mask stayed empty at {size} px even with pixel placement")
    return out


def sample_finding(
    kind: str, rng: np.random.Generator, p_hedge: float = 0.0, sides: tuple[str, ...] | None = None
) -> FindingSpec:
    """A random instance of finding ``kind`` (side, zone, severity, certainty)."""
    options = sides or FINDING_SIDES[kind]
    if kind == "support_devices":
        device = str(rng.choice(sorted(DEVICE_KINDS)))
        dev_sides = DEVICE_KINDS[device]["sides"]
        return FindingSpec(kind, side=str(dev_sides[int(rng.integers(len(dev_sides)))]), severity="none", device=device)
    if len(options) > 1 and "bilateral" in options:
        side = "bilateral" if rng.random() < 0.12 else ("left" if rng.random() < 0.5 else "right")
    else:
        side = str(options[int(rng.integers(len(options)))])
    zones = FINDING_ZONES[kind]
    if kind == "atelectasis":
        zone = str(rng.choice(zones, p=[0.6, 0.25, 0.15]))
    else:
        zone = str(zones[int(rng.integers(len(zones)))])
    severity = str(SEVERITIES[int(rng.integers(3))])
    certainty = "uncertain" if rng.random() < p_hedge else "present"
    return FindingSpec(kind, side=side, zone=zone, severity=severity, certainty=certainty)


def sample_findings(
    rng: np.random.Generator, exclude: tuple[str, ...] = (), p_normal: float = P_NORMAL, p_hedge: float = P_HEDGE
) -> tuple[FindingSpec, ...]:
    """The general mix: normal studies, and 1-3 co-occurring findings of distinct kinds."""
    if rng.random() < p_normal:
        return ()
    k = 1 + int(rng.random() < 0.45) + int(rng.random() < 0.2)
    kinds = [f for f in FINDING_WEIGHTS if f not in exclude]
    w = np.array([FINDING_WEIGHTS[f] for f in kinds])
    chosen = rng.choice(len(kinds), size=min(k, len(kinds)), replace=False, p=w / w.sum())
    out: list[FindingSpec] = []
    for i in sorted(chosen):
        spec = sample_finding(kinds[i], rng, p_hedge)
        if spec.finding in ("pneumothorax", "pleural_effusion"):  # no hydropneumothorax: keep them apart
            other = {s.side for s in out if s.finding in ("pneumothorax", "pleural_effusion")}
            if spec.side in other or (other and spec.side == "bilateral") or "bilateral" in other:
                continue
        out.append(spec)
    return tuple(out)


#: Share of binding studies with three findings (the rest have two).
P_THREE_FINDINGS = 0.25
#: Zone a zone-less finding occupies on its side (binding studies keep other findings out of it).
_ZONELESS_ZONE = {"pleural_effusion": "lower", "pneumothorax": "upper"}


def binding_ok(findings: tuple[FindingSpec, ...] | list[FindingSpec]) -> bool:
    """A valid binding study: left/right only, no pneumothorax + effusion on one side, every two
    findings apart (other side, or other zone; an effusion holds its side's lower zone and a
    pneumothorax its upper zone), and at least one swap foil (two sides or two zones that differ)."""
    fs = list(findings)
    if any(f.side not in ("left", "right") for f in fs):
        return False
    for a_i, a in enumerate(fs):
        for b in fs[a_i + 1 :]:
            if a.side != b.side:
                continue
            if {a.finding, b.finding} == {"pneumothorax", "pleural_effusion"}:
                return False
            za, zb = _ZONELESS_ZONE.get(a.finding, a.zone), _ZONELESS_ZONE.get(b.finding, b.zone)
            if za == zb:
                return False
    sides_differ = len({f.side for f in fs}) > 1
    zones = [f.zone for f in fs if f.zone != "none"]
    return sides_differ or len(set(zones)) > 1


def sample_binding(rng: np.random.Generator, attempts: int = 200) -> tuple[FindingSpec, ...]:
    """2 (or, with probability :data:`P_THREE_FINDINGS`, 3) relational findings of distinct kinds that
    pass :func:`binding_ok` (rejection sampling from ``rng``; deterministic)."""
    k = 3 if rng.random() < P_THREE_FINDINGS else 2
    for _ in range(attempts):
        kinds = rng.choice(len(RELATIONAL_FINDINGS), size=k, replace=False)
        findings = tuple(sample_finding(RELATIONAL_FINDINGS[int(j)], rng, sides=("left", "right")) for j in kinds)
        if binding_ok(findings):
            return findings
    raise RuntimeError(f"no valid binding study in {attempts} draws")  # a bug guard: most draws pass


def _ids(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(2**62)), int(rng.integers(2**62))


def build_specs(
    set_name: str, seed: int, n: int, per_class: int, classification_n: int | None = None
) -> list[StudySpec]:
    """The study specs of one set (cheap; runs in the main process).

    ``classification_n``: studies of the classification set (default ``max(6 * per_class, 24)``); a
    linear probe whose intervals can rank methods needs thousands (70 / 15 / 15 % by patient).
    """
    key = SET_KEYS[set_name]
    specs: list[StudySpec] = []

    def one(i: int, patient: str, findings, *, pseed: int | None = None, prior=False, cls="", task="") -> StudySpec:
        r = derive_rng(seed, key, i)
        s, p = _ids(r)
        view = "AP" if r.random() < P_AP else "PA"
        return StudySpec(
            study_id=f"{key[:3]}-{i:06d}",
            patient_id=patient,
            findings=tuple(findings),
            view=view,
            patient_seed=pseed if pseed is not None else p,
            seed=s,
            prior=prior,
            cls=cls,
            task=task,
        )

    if set_name == "pretrain":
        prng = derive_rng(seed, key, "patients")
        i = 0
        patient = 0
        while i < n:
            visits = min(1 + int(prng.random() < 0.35) + int(prng.random() < 0.15), n - i)
            pseed = int(prng.integers(2**62))
            for v in range(visits):
                findings = sample_findings(derive_rng(seed, key, "findings", i))
                specs.append(one(i, f"pre-p{patient:06d}", findings, pseed=pseed, prior=v > 0))
                i += 1
            patient += 1
    elif set_name == "classification":
        total = classification_n if classification_n is not None else max(6 * per_class, 24)
        prng = derive_rng(seed, key, "patients")
        i = patient = 0
        while i < total:
            visits = min(1 + int(prng.random() < 0.3), total - i)
            pseed = int(prng.integers(2**62))
            for v in range(visits):
                findings = sample_findings(derive_rng(seed, key, "findings", i))
                specs.append(one(i, f"cls-p{patient:06d}", findings, pseed=pseed, prior=v > 0))
                i += 1
            patient += 1
    elif set_name in ("zeroshot_5x200", "retrieval_8x200"):
        classes = ZEROSHOT_CLASSES if set_name == "zeroshot_5x200" else RETRIEVAL_CLASSES
        i = 0
        for _ in range(per_class):
            for cls in classes:
                r = derive_rng(seed, key, "findings", i)
                kind = FINDING_OF_LABEL[cls]
                findings = () if kind == "no_finding" else (sample_finding(kind, r),)
                specs.append(one(i, f"{key[:3]}-p{i:06d}", findings, cls=cls))
                i += 1
    elif set_name == "segmentation":
        i = 0
        for _ in range(per_class):
            for task in ("pneumothorax", "opacity"):
                targets = ("pneumothorax",) if task == "pneumothorax" else OPACITY_FINDINGS
                for positive in (True, False):
                    r = derive_rng(seed, key, "findings", i)
                    if positive:
                        kind = targets[int(r.integers(len(targets)))]
                        extra = sample_findings(r, exclude=targets + ("support_devices",), p_normal=0.7, p_hedge=0)
                        main = sample_finding(kind, r, sides=("left", "right") if kind != "edema" else None)
                        clash = {"pleural_effusion"} if kind == "pneumothorax" else set()
                        findings = (main,) + tuple(e for e in extra[:1] if e.finding not in clash)
                    else:
                        findings = sample_findings(r, exclude=targets, p_hedge=0)
                    specs.append(one(i, f"seg-p{i:06d}", findings, task=task))
                    i += 1
    elif set_name == "relations":
        for i in range(per_class):
            r = derive_rng(seed, key, "findings", i)
            kind = RELATIONAL_FINDINGS[i % len(RELATIONAL_FINDINGS)]
            finding = sample_finding(kind, r, sides=("left", "right"))
            specs.append(one(i, f"rel-p{i:06d}", (finding,), cls=CHEXPERT_LABEL[kind], task="single"))
        for i in range(per_class, 2 * per_class):  # binding studies: ids continue after the single ones
            findings = sample_binding(derive_rng(seed, key, "binding", i))
            specs.append(one(i, f"rel-p{i:06d}", findings, cls="binding", task="binding"))
    else:
        raise ValueError(f"unknown set {set_name!r}; known: {', '.join(SET_KEYS)}")
    return specs


def assign_splits(specs: list[StudySpec], set_name: str, seed: int) -> list[StudySpec]:
    """Patient-level train/valid/test for pretrain, classification and segmentation; relations: valid /
    test, half each, by study (one patient per study), seeded, within single and within binding
    studies (choose designs on valid, report test); others are test."""
    fractions = {"pretrain": (0.8, 0.1, 0.1), "classification": (0.7, 0.15, 0.15), "segmentation": (0.7, 0.15, 0.15)}
    if set_name == "relations":
        split_of: dict[str, str] = {}
        for task in sorted({s.task for s in specs}):
            ids = [s.study_id for s in specs if s.task == task]
            order = derive_rng(seed, SET_KEYS[set_name], "split", task).permutation(len(ids))
            n_valid = len(ids) // 2
            for rank, idx in enumerate(order):
                split_of[ids[idx]] = "valid" if rank < n_valid else "test"
        return [replace(s, split=split_of[s.study_id]) for s in specs]
    if set_name not in fractions:
        return [replace(s, split="test") for s in specs]
    split_seed = int(derive_rng(seed, SET_KEYS[set_name], "split").integers(2**31))
    mapping = patient_split([s.patient_id for s in specs], fractions[set_name], seed=split_seed)
    return [replace(s, split=mapping[s.patient_id]) for s in specs]


# --------------------------------------------------------------------------------------------- writing
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(array: np.ndarray, up_filter: bool = True, level: int = 1) -> bytes:
    """An 8-bit grayscale PNG of ``array`` (uint8 [H, W]), encoded with numpy + zlib.

    Every row uses PNG filter 2 ("Up", the byte-wise difference to the row above) when
    ``up_filter`` (smooth images compress better), else filter 0 (masks); deflate uses zlib's
    run-length strategy, which is faster and, on these noisy images, smaller than its default.
    Deterministic bytes; several times faster than PIL's encoder at its default level.
    """
    h, w = array.shape
    rows = np.empty((h, w + 1), dtype=np.uint8)
    rows[:, 0] = 2 if up_filter else 0
    rows[:, 1:] = array
    if up_filter:
        np.subtract(array[1:], array[:-1], out=rows[1:, 1:])  # uint8 arithmetic wraps mod 256 as PNG wants
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit grayscale, no interlace
    deflate = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", deflate.compress(rows.tobytes()) + deflate.flush())
        + _png_chunk(b"IEND", b"")
    )


@lru_cache(maxsize=8)
def _empty_mask_png(size: int) -> bytes:
    return png_bytes(np.zeros((size, size), dtype=np.uint8), up_filter=False)


def _save_png(array: np.ndarray, path: Path) -> None:
    path.write_bytes(png_bytes(array))


def _save_mask(mask: np.ndarray, path: Path) -> None:
    """A 0/255 mask PNG; empty masks (segmentation negatives) reuse one encoding per size."""
    if mask.any():
        data = png_bytes(mask.view(np.uint8) * np.uint8(255), up_filter=False)
    else:
        data = _empty_mask_png(mask.shape[0])
    path.write_bytes(data)


def build_row(task: tuple[StudySpec, int, str, str]) -> dict[str, object]:
    """Render, write the files of and describe one study (runs in a worker)."""
    spec, size, folder, set_name = task
    out = render_study_checked(spec, size)
    root = Path(folder)
    image_rel = f"images/{spec.study_id}.png"
    _save_png(out.image, root / image_rel)
    annotations = []
    for k, (f, mask) in enumerate(zip(out.spec.findings, out.masks, strict=True)):
        rel = f"masks/{spec.study_id}_{k}_{f.finding}.png"
        _save_mask(mask, root / rel)
        ann = {
            "finding": f.finding,
            "label": CHEXPERT_LABEL[f.finding],
            "side": f.side,
            "zone": f.zone,
            "severity": f.severity,
            "certainty": f.certainty,
            "mask": rel,
        }
        if f.device:
            ann["device"] = f.device
        annotations.append(ann)
    row: dict[str, object] = {
        "study_id": spec.study_id,
        "patient_id": spec.patient_id,
        "image_path": image_rel,
        "view": spec.view,
        "report": out.report.text,
        "findings": out.report.findings,
        "impression": out.report.impression,
        "split": spec.split,
        **{name: out.report.labels[name] for name in CHEXPERT_LABELS},
        "mask_path": "",
        "source": "synthcxr",
        "annotations": json.dumps(annotations),
    }
    row[ROLES_KEY] = roles_record(spec.study_id, out.report)
    if set_name in ("zeroshot_5x200", "retrieval_8x200", "relations"):
        row["class"] = spec.cls
    if set_name == "relations":
        row["mask_path"] = annotations[0]["mask"]
        row["task"] = spec.task
    if set_name == "segmentation":
        for target, kinds in (("pneumothorax", ("pneumothorax",)), ("opacity", OPACITY_FINDINGS)):
            union = np.zeros((size, size), dtype=bool)
            for f, mask in zip(out.spec.findings, out.masks, strict=True):
                if f.finding in kinds:
                    union |= mask
            rel = f"masks/{spec.study_id}_{target}.png"
            _save_mask(union, root / rel)
            row[f"mask_{target}"] = rel
        row["task"] = spec.task
        row["mask_path"] = row[f"mask_{spec.task}"]
    return row


# --------------------------------------------------------------------------------------------- manifest
@dataclass
class SynthManifest:
    """What was generated: version, config, and counts per set (split, finding, side, zone, severity, class)."""

    version: str
    seed: int
    size: int
    n: int
    per_class: int
    out: str
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("out")
        return d

    def summary(self) -> str:
        lines = [f"SynthCXR {self.version} -> {self.out} (seed {self.seed}, {self.size} px)"]
        for name, info in self.sets.items():
            splits = ", ".join(f"{k} {v}" for k, v in info["split"].items())
            lines.append(f"  {name:<16} {info['studies']:>6} studies ({splits})")
        return "\n".join(lines)


def _counts(df: pd.DataFrame) -> dict[str, object]:
    anns = [a for text in df["annotations"] for a in json.loads(text)]
    info: dict[str, object] = {
        "studies": len(df),
        "patients": int(df["patient_id"].nunique()),
        "split": dict(sorted(Counter(df["split"]).items())),
        "view": dict(sorted(Counter(df["view"]).items())),
        "finding": dict(sorted(Counter(a["finding"] for a in anns).items())),
        "side": dict(sorted(Counter(a["side"] for a in anns).items())),
        "zone": dict(sorted(Counter(a["zone"] for a in anns).items())),
        "severity": dict(sorted(Counter(a["severity"] for a in anns).items())),
        "certainty": dict(sorted(Counter(a["certainty"] for a in anns).items())),
        "normal_studies": int(sum(1 for text in df["annotations"] if text == "[]")),
        "labels_positive": {c: int((df[c] == 1.0).sum()) for c in CHEXPERT_LABELS},
        "labels_uncertain": {c: int((df[c] == -1.0).sum()) for c in CHEXPERT_LABELS},
        "labels_negative": {c: int((df[c] == 0.0).sum()) for c in CHEXPERT_LABELS},
    }
    if "class" in df.columns:
        info["class"] = dict(sorted(Counter(df["class"]).items()))
    if "task" in df.columns and set(df["task"]) <= {"pneumothorax", "opacity"}:
        info["task_positive"] = {
            t: int(
                sum(
                    1
                    for _, r in df[df["task"] == t].iterrows()
                    if any(
                        a["finding"] in (("pneumothorax",) if t == "pneumothorax" else OPACITY_FINDINGS)
                        for a in json.loads(r["annotations"])
                    )
                )
            )
            for t in ("pneumothorax", "opacity")
        }
    if "task" in df.columns:
        info["task"] = dict(sorted(Counter(df["task"]).items()))
        if "binding" in set(df["task"]):
            info["split_by_task"] = {
                t: dict(sorted(Counter(df.loc[df["task"] == t, "split"]).items())) for t in sorted(set(df["task"]))
            }
            info["findings_per_study"] = dict(
                sorted(Counter(str(len(json.loads(a))) for a in df["annotations"]).items())
            )
    return info


# --------------------------------------------------------------------------------------------- driver
def check_args(n: int, size: int, seed: int, per_class: int, workers: int) -> None:
    """Raise ValueError naming the argument that is out of range."""
    for name, value, (lo, hi) in (
        ("size", size, SIZE_RANGE),
        ("n", n, N_RANGE),
        ("per_class", per_class, PER_CLASS_RANGE),
        ("workers", workers, WORKERS_RANGE),
        ("seed", seed, (0, 2**31 - 1)),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")


def _map(pool, fn, tasks: list, workers: int) -> Iterator:
    if pool is None:
        return map(fn, tasks)
    chunk = max(1, min(32, len(tasks) // (workers * 8) or 1))
    return pool.imap(fn, tasks, chunksize=chunk)


def generate(
    out: Path,
    n: int = 4000,
    size: int = 128,
    seed: int = 0,
    per_class: int = 200,
    workers: int = 1,
    overwrite: bool = False,
    preview: bool = False,
    progress: bool = False,
    sets: tuple[str, ...] | None = None,
    classification_n: int | None = None,
) -> SynthManifest:
    """Generate SynthCXR into ``out`` (see the module docstring); return the manifest.

    ``sets`` restricts the output to some set folders (benchmarks); the default writes all.
    """
    check_args(n, size, seed, per_class, workers)
    if classification_n is not None and not N_RANGE[0] <= classification_n <= N_RANGE[1]:
        raise ValueError(f"classification_n must be between {N_RANGE[0]} and {N_RANGE[1]}, got {classification_n}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose another --out")
    non_empty = out.is_dir() and any(out.iterdir())
    if non_empty and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    names = tuple(SET_KEYS) if sets is None else sets
    unknown = [s for s in names if s not in SET_KEYS]
    if unknown:
        raise ValueError(f"unknown set(s) {unknown}; known: {', '.join(SET_KEYS)}")
    manifest = SynthManifest(
        GENERATOR_VERSION,
        seed,
        size,
        n,
        per_class,
        str(out),
        config={
            "n": n,
            "size": size,
            "seed": seed,
            "per_class": per_class,
            "classification_n": classification_n,
            "sets": list(names),
            "p_normal": P_NORMAL,
            "p_hedge": P_HEDGE,
            "p_ap": P_AP,
            "finding_weights": FINDING_WEIGHTS,
        },
    )
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        with atomic_dir(out, overwrite=True) as tmp:
            frames: dict[str, pd.DataFrame] = {}
            for name in names:
                start = time.perf_counter()
                specs = assign_splits(build_specs(name, seed, n, per_class, classification_n), name, seed)
                folder = tmp / name
                (folder / "images").mkdir(parents=True)
                (folder / "masks").mkdir()
                tasks = [(s, size, str(folder), name) for s in specs]
                rows = list(_map(pool, build_row, tasks, workers))
                roles = [row.pop(ROLES_KEY) for row in rows]
                df = pd.DataFrame(rows)
                write_studies(df, folder)
                _write_roles(roles, folder)
                if name == "relations":
                    _write_candidates(specs, folder)
                frames[name] = df
                manifest.sets[name] = _counts(df)
                if progress:
                    dt = time.perf_counter() - start
                    print(
                        f"synth: {name}: {len(df)} studies in {dt:.1f} s ({len(df) / max(dt, 1e-9):.0f}/s)",
                        file=sys.stderr,
                        flush=True,
                    )
            if "pretrain" in frames:
                _check_disjoint(frames)
            atomic_write_json(tmp / "manifest.json", manifest.to_dict())
            if preview:
                from reclf.data.synthetic.preview import write_preview

                write_preview(tmp, tmp / "preview.png")
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return manifest


def study_candidates(spec: StudySpec) -> list[tuple[str, bool, str]]:
    """The candidate captions of one relations study (single-finding or binding)."""
    if spec.task == "binding":
        return binding_candidates(spec.findings, spec.seed)
    return relation_candidates(spec.findings[0], spec.seed)


def caption_record(spec: StudySpec) -> dict[str, object]:
    """One line of ``caption_roles.jsonl``: the words of a relations study's TRUE caption, their roles and
    the finding (annotation index) each describes (as ``word_roles.jsonl`` does for reports)."""
    if spec.task == "binding":
        tagged = binding_caption(spec.findings, spec.seed, tagged=True)
    else:
        tagged = caption_tagged(spec.findings[0], spec.seed)
    roles = word_roles(tagged)
    return {
        "study_id": spec.study_id,
        "words": [r.word for r in roles],
        "roles": [r.role for r in roles],
        "finding": [r.finding for r in roles],
        "section": [r.section for r in roles],
    }


def _write_candidates(specs: list[StudySpec], folder: Path) -> None:
    rows = []
    for s in specs:
        for text, correct, contrast in study_candidates(s):
            rows.append({"study_id": s.study_id, "text": text, "is_correct": int(correct), "contrast": contrast})
    from reclf.utils.io import atomic_path

    with atomic_path(folder / "candidates.csv") as tmp:
        pd.DataFrame(rows, columns=["study_id", "text", "is_correct", "contrast"]).to_csv(tmp, index=False)
    _write_roles([caption_record(s) for s in specs], folder, CAPTION_ROLES_FILE)


#: Row key that carries a study's word roles from the worker to the side file (not a table column).
ROLES_KEY = "_word_roles"
#: The side file of every set: one JSON line per study, in table order (``docs/synthcxr.md``).
ROLES_FILE = "word_roles.jsonl"
#: The relations set's side file of the true captions' word roles (same format as :data:`ROLES_FILE`).
CAPTION_ROLES_FILE = "caption_roles.jsonl"


def roles_record(study_id: str, report: Report) -> dict[str, object]:
    """One line of ``word_roles.jsonl``: the words of the cleaned report and their roles (parallel lists)."""
    return {
        "study_id": study_id,
        "words": [r.word for r in report.roles],
        "roles": [r.role for r in report.roles],
        "finding": [r.finding for r in report.roles],
        "section": [r.section for r in report.roles],
    }


def _write_roles(records: list[dict[str, object]], folder: Path, name: str = ROLES_FILE) -> None:
    from reclf.utils.io import atomic_path

    with atomic_path(folder / name) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, separators=(",", ":")) + "\n")


def _check_disjoint(frames: dict[str, pd.DataFrame]) -> None:
    """Evaluation sets share no patient with pretrain's training split (a bug guard, not a filter)."""
    train = set(frames["pretrain"].loc[frames["pretrain"]["split"] == "train", "patient_id"])
    for name, df in frames.items():
        if name != "pretrain" and train & set(df["patient_id"]):
            raise RuntimeError(f"{name} shares patients with pretrain/train")


__all__ = [
    "GENERATOR_VERSION",
    "RenderedStudy",
    "StudySpec",
    "SynthManifest",
    "binding_ok",
    "build_specs",
    "generate",
    "render_study",
    "render_study_checked",
    "sample_binding",
    "sample_finding",
    "sample_findings",
]
