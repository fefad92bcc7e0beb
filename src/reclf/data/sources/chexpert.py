"""CheXpert: ``train.csv`` / ``valid.csv`` -> a training table, an uncertain-label policy and a seeded 5x200 set.

* ``Path`` values start with ``CheXpert-v1.0-small/`` or ``CheXpert-v1.0/``; ``--root`` may be that folder or the
  one above it (the folder holding ``train.csv`` is the base, the prefix is stripped).
* ``study_id`` is the image path without prefix and suffix (``train/patient00001/study1/view1_frontal``): one row
  per image.
* Splits: the official ``valid.csv`` (radiologist-labelled, 200 studies) is the **test** split (as MGCA); the
  patients of ``train.csv`` are split train/valid at ``--valid-fraction`` (seeded, patient-level).
* The zero-shot **5x200** set (GLoRIA's rule as issue #6 states it): frontal images of ``train.csv`` where the
  class is positive (1) and the other four of Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion
  are negative or blank; 200 per class drawn with a seeded generator. It is written as ``zeroshot_5x200.txt``
  (``study_id<TAB>class``) and as its own table folder ``zeroshot_5x200/`` with a ``class`` column; every
  *patient* with an image in it is removed from the main table (stricter than excluding the images).
* The retrieval **8x200** set (``chexpert_8x200.py``; ``--retrieval-per-class``, 0 = off) is drawn the same way
  from the frontal training images left after the 5x200 patients, and its patients leave training too.
* The uncertain-label policy (``-1``) applies to the main table only: ``keep`` (default), ``ones``, ``zeros``,
  ``gloria`` (U-ones for Atelectasis, Edema, Pleural Effusion; U-zeros for Cardiomegaly, Consolidation), or an
  explicit list ``Atelectasis=1,Cardiomegaly=0,...``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from reclf.data.sources.common import (
    DropLog,
    PrepareOptions,
    SourceLayoutError,
    SourceTable,
    canonical_frame,
    find_file,
    read_csv_counting_bad,
    require_columns,
    view_from_text,
)
from reclf.data.studies import CHEXPERT_LABELS
from reclf.utils.seed import rng

ZEROSHOT_CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
GLORIA_POLICY = {"Atelectasis": 1.0, "Edema": 1.0, "Pleural Effusion": 1.0, "Cardiomegaly": 0.0, "Consolidation": 0.0}
ZEROSHOT_NAME = "zeroshot_5x200"
PREFIXES = ("CheXpert-v1.0-small", "CheXpert-v1.0")


def parse_policy(text: str | None) -> dict[str, float]:
    """``keep`` | ``ones`` | ``zeros`` | ``gloria`` | ``Label=1,Label=0`` -> {label: value for -1}."""
    text = (text or "keep").strip()
    low = text.lower()
    if low == "keep":
        return {}
    if low in ("ones", "u-ones"):
        return {c: 1.0 for c in CHEXPERT_LABELS}
    if low in ("zeros", "u-zeros"):
        return {c: 0.0 for c in CHEXPERT_LABELS}
    if low == "gloria":
        return dict(GLORIA_POLICY)
    policy: dict[str, float] = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in CHEXPERT_LABELS or value.strip() not in ("0", "1", "-1", "nan", ""):
            raise ValueError(
                f"--uncertain: {item!r} is not LABEL=0|1|-1|nan with LABEL one of {list(CHEXPERT_LABELS)}; "
                "or use keep, ones, zeros, gloria"
            )
        policy[name] = float(value) if value.strip() not in ("", "nan") else np.nan
    return policy


def apply_policy(df: pd.DataFrame, policy: dict[str, float]) -> pd.DataFrame:
    df = df.copy()
    for label, value in policy.items():
        df.loc[df[label] == -1.0, label] = value
    return df


def read_chexpert_csv(path: Path, drops: DropLog, official_split: str) -> pd.DataFrame:
    """One CheXpert CSV -> canonical rows (``split`` = ``official_split``) with ``source_rel`` (path below base)."""
    raw = read_csv_counting_bad(path, drops)
    require_columns(raw, ["Path", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS], path)
    # Vectorised on Arrow strings (the full 223k-row train.csv parses in about a second).
    rel = raw["Path"].astype("str").str.strip().str.replace(r"^CheXpert-v1\.0(?:-small)?/", "", regex=True)
    pattern = r"(?:\w+/)?patient\d+/study\d+/[^/]+\.\w+"
    path_ok = rel.str.fullmatch(pattern).fillna(False).astype(bool)
    patient = rel.str.replace(r"^(?:\w+/)?(patient\d+)/.*$", r"\1", regex=True)
    text = raw[list(CHEXPERT_LABELS)]
    labels = pd.DataFrame({c: pd.to_numeric(text[c], errors="coerce") for c in CHEXPERT_LABELS})
    label_bad = (labels.notna() & ~labels.isin([1.0, 0.0, -1.0])).any(axis=1) | ((text != "") & labels.isna()).any(
        axis=1
    )
    bad = ~path_ok | label_bad
    drops.bad(
        "malformed_csv_row",
        f"{path.name}: a Path that is not <prefix>/<split>/patientN/studyN/<view>.jpg, or a label not 1/0/-1/blank",
        int(bad.sum()),
        rel[bad].head(5),
    )
    frontal = raw["Frontal/Lateral"].astype(str).str.strip().str.lower()
    # Frontal rows take their view from AP/PA; the few frontal rows coded LL/RL there are UNKNOWN.
    view = view_from_text(raw["AP/PA"]).replace({"LATERAL": "UNKNOWN"}).where(frontal == "frontal", "LATERAL")
    df = canonical_frame(
        len(raw),
        study_id=rel.str.replace(r"\.\w+$", "", regex=True),
        patient_id=patient,
        view=view,
        split=official_split,
    )
    df["source_rel"] = rel.to_numpy()
    df["frontal"] = (frontal == "frontal").to_numpy()
    for c in CHEXPERT_LABELS:
        df[c] = labels[c].to_numpy()
    df["source"] = "chexpert"
    return df[~bad.to_numpy()].reset_index(drop=True)


def zeroshot_candidates(df: pd.DataFrame) -> pd.Series:
    """For each row, the 5x200 class it qualifies for ("" when none); rows must be frontal already."""
    cls = pd.Series("", index=df.index)
    for c in ZEROSHOT_CLASSES:
        others = [o for o in ZEROSHOT_CLASSES if o != c]
        ok = (df[c] == 1.0) & df[others].isin([0.0]).where(df[others].notna(), True).all(axis=1)
        cls[ok] = c
    return cls


def build_zeroshot(df: pd.DataFrame, per_class: int, seed: int, drops: DropLog) -> pd.DataFrame:
    """Draw ``per_class`` images per class with a seeded generator from the qualifying frontal rows."""
    cls = zeroshot_candidates(df)
    picks = []
    counts = {}
    for c in ZEROSHOT_CLASSES:
        pool = df.index[cls == c]
        pool = pool[np.argsort(df.loc[pool, "study_id"].to_numpy(), kind="stable")]
        n = min(per_class, len(pool))
        counts[c] = {"candidates": int(len(pool)), "drawn": int(n)}
        chosen = np.sort(rng(seed, "chexpert-5x200", c).choice(len(pool), size=n, replace=False))
        picks.append(df.loc[pool[chosen]].assign(**{"class": c}))
    drops.note("zeroshot_5x200", counts)
    short = {c: v for c, v in counts.items() if v["drawn"] < per_class}
    if short:
        drops.note("zeroshot_5x200_short", f"fewer than {per_class} candidates for {sorted(short)}")
    out = pd.concat(picks, ignore_index=True) if picks else df.iloc[:0].assign(**{"class": ""})
    out["split"] = "test"
    return out


def two_way_split(patients: pd.Series, valid_fraction: float, seed: int) -> dict[str, str]:
    """Seeded patient-level train/valid split (no test part)."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"--valid-fraction {valid_fraction} must be in [0, 1)")
    unique = sorted(set(patients.astype(str)))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_valid = int(round(valid_fraction * len(unique)))
    return {unique[i]: ("valid" if rank < n_valid else "train") for rank, i in enumerate(order)}


def find_base(root: Path) -> Path:
    for base in (root, *(root / p for p in PREFIXES)):
        if find_file(base, ["train.csv"], "CheXpert", required=False):
            return base
    raise SourceLayoutError(
        f"{root} does not look like CheXpert: expected train.csv (or train.csv.gz) in it or in "
        f"{root}/{PREFIXES[0]}; point --root at the folder that holds train.csv"
    )


def parse(opts: PrepareOptions) -> SourceTable:
    root = Path(opts.root).resolve()
    drops = DropLog(opts.strict)
    base = find_base(root)
    train_path = find_file(base, ["train.csv"], "CheXpert")
    assert train_path is not None
    train = read_chexpert_csv(train_path, drops, "train")
    n_read = len(train)
    valid_path = find_file(base, ["valid.csv"], "CheXpert", required=False)
    test = read_chexpert_csv(valid_path, drops, "test") if valid_path else train.iloc[:0]
    n_read += len(test)
    if valid_path is None:
        drops.note("valid_csv", "absent: no test split")

    views = [v.strip().upper() for v in str(opts.get("views", "PA,AP")).split(",") if v.strip()]
    data = pd.concat([train, test], ignore_index=True)
    dup = data["study_id"].duplicated()
    drops.bad("duplicate_path", "the same image Path listed twice", int(dup.sum()), data.loc[dup, "study_id"])
    data = data[~dup]
    frontal_train = data[(data["split"] == "train") & data["frontal"]]

    per_class = int(opts.get("zeroshot_per_class", 200))
    extra, id_lists = {}, {}
    if per_class > 0:
        zs = build_zeroshot(frontal_train, per_class, opts.seed, drops)
        excluded = set(zs["patient_id"])
        hit = (data["split"] == "train") & data["patient_id"].isin(excluded)
        drops.filtered(
            "zeroshot_patient",
            f"image of a patient in the {ZEROSHOT_NAME} set (kept out of training)",
            int(hit.sum()),
            data.loc[hit, "study_id"],
        )
        data = data[~hit]
        extra[ZEROSHOT_NAME] = zs
        id_lists[f"{ZEROSHOT_NAME}.txt"] = "".join(f"{s}\t{c}\n" for s, c in zip(zs["study_id"], zs["class"]))

    retrieval_per_class = int(opts.get("retrieval_per_class", 200))
    if retrieval_per_class > 0:  # CheXpert 8x200 (chexpert_8x200.py), drawn after the 5x200 patients left
        from reclf.data.sources.chexpert_8x200 import RETRIEVAL_NAME, build_retrieval

        pool = data[(data["split"] == "train") & data["frontal"]]
        rt = build_retrieval(pool, retrieval_per_class, opts.seed, drops)
        hit = (data["split"] == "train") & data["patient_id"].isin(set(rt["patient_id"]))
        drops.filtered("retrieval_patient", f"image of a patient in the {RETRIEVAL_NAME} set (kept out of training)",
                       int(hit.sum()), data.loc[hit, "study_id"])
        data = data[~hit]
        extra[RETRIEVAL_NAME] = rt
        id_lists[f"{RETRIEVAL_NAME}.txt"] = "".join(f"{s}\t{c}\n" for s, c in zip(rt["study_id"], rt["class"]))

    keep_view = data["view"].isin(views)
    for v, n in data.loc[~keep_view, "view"].value_counts().items():
        drops.filtered(f"view_{v.lower()}", f"view {v} not selected (--views {','.join(views)})", int(n))
    data = data[keep_view]

    valid_fraction = float(opts.get("valid_fraction", 0.1))
    train_rows = data["split"] == "train"
    assign = two_way_split(data.loc[train_rows, "patient_id"], valid_fraction, opts.seed)
    data.loc[train_rows, "split"] = data.loc[train_rows, "patient_id"].map(assign)
    policy = parse_policy(opts.get("uncertain", "keep"))
    data = apply_policy(data, policy)
    drops.note("uncertain_policy", {k: (None if np.isnan(v) else v) for k, v in policy.items()} or "keep")

    def finish(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        df["source_path"] = (str(base) + "/" + df["source_rel"].astype("str")).to_numpy()
        return df.drop(columns=["source_rel", "frontal"])

    extra = {k: finish(v) for k, v in extra.items()}
    return SourceTable(
        "chexpert",
        finish(data),
        drops,
        rows_read=n_read,
        info={"train_csv": str(train_path), "valid_csv": str(valid_path) if valid_path else None},
        extra_tables=extra,
        id_lists=id_lists,
    )
