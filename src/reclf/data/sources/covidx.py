"""COVIDx (any release): space-separated ``train*.txt`` / ``test*.txt`` lists + ``train/`` and ``test/`` images.

Each line is ``patient_id filename class source`` (three-column releases without ``source`` are accepted). The
release is taken from the list names (``train_COVIDx9A.txt`` -> ``COVIDx9A``) or ``--release``, and written in
the output, because accuracy depends strongly on the release. The official test list is the test split; the
training list is split train/valid by patient (``--valid-fraction``, seeded). Patients of the test list that also
appear in the training list are removed from training (counted), so no patient spans both.
Labels: ``normal``/``negative`` -> No Finding = 1; ``pneumonia``/``COVID-19``/``positive`` -> Pneumonia = 1 and
No Finding = 0; the list's class itself is the ``class`` column.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from reclf.data.sources.chexpert import two_way_split
from reclf.data.sources.common import (
    DropLog,
    PrepareOptions,
    SourceLayoutError,
    SourceTable,
    canonical_frame,
    decode_report,
)

NORMAL = {"normal", "negative"}
DISEASE = {"pneumonia", "covid-19", "covid", "positive"}


def find_lists(root: Path) -> tuple[Path, Path]:
    def pick(kind: str) -> Path:
        found = sorted(p for p in root.glob(f"{kind}*.txt") if p.is_file())
        if not found:
            found = sorted(p for p in root.glob(f"*{kind}*.txt") if p.is_file())
        if not found:
            raise SourceLayoutError(
                f"{root} does not look like COVIDx: expected {kind}.txt (or e.g. {kind}_COVIDx9A.txt) in it"
            )
        return found[-1]

    return pick("train"), pick("test")


def release_name(path: Path) -> str:
    m = re.search(r"(COVIDx[\w.-]*)", path.stem, re.IGNORECASE)
    return m.group(1) if m else "unknown"


def read_list(path: Path, drops: DropLog) -> pd.DataFrame:
    """Parse one list; lines with fewer than 3 fields, or not UTF-8, are counted and dropped."""
    rows, bad = [], []
    data = path.read_bytes()
    for lineno, raw in enumerate(data.splitlines(), start=1):
        line = decode_report(raw)
        if line is None:
            bad.append(f"{path.name}:{lineno}")
            continue
        line = line.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 3:
            bad.append(f"{path.name}:{lineno}")
            continue
        if len(parts) == 3:
            patient, filename, cls, src = parts[0], parts[1], parts[2], ""
        else:
            patient, cls, src = parts[0], parts[-2], parts[-1]
            filename = " ".join(parts[1:-2])
        rows.append((patient, filename, cls, src))
    drops.bad(
        "malformed_list_line", f"{path.name}: a line that is not 'patient_id filename class source'", len(bad), bad
    )
    return pd.DataFrame(rows, columns=["patient_id", "filename", "class", "data_source"])


def parse(opts: PrepareOptions) -> SourceTable:
    root = Path(opts.root).resolve()
    drops = DropLog(opts.strict)
    train_list, test_list = find_lists(root)
    release = str(opts.get("release", "")) or release_name(train_list)
    train = read_list(train_list, drops).assign(split="train", folder="train")
    test = read_list(test_list, drops).assign(split="test", folder="test")
    n_read = len(train) + len(test)
    for df, name in ((train, "train"), (test, "test")):
        dup = df["filename"].duplicated()
        drops.bad(
            f"duplicate_{name}_file",
            f"a filename listed twice in the {name} list",
            int(dup.sum()),
            df.loc[dup, "filename"],
        )
        df.drop(index=df.index[dup], inplace=True)
    overlap = train["patient_id"].isin(set(test["patient_id"]))
    drops.filtered(
        "patient_in_test",
        "a training-list image whose patient is also in the test list",
        int(overlap.sum()),
        train.loc[overlap, "filename"],
    )
    train = train[~overlap]
    assign = two_way_split(train["patient_id"], float(opts.get("valid_fraction", 0.2)), opts.seed)
    train = train.assign(split=train["patient_id"].map(assign))
    data = pd.concat([train, test], ignore_index=True)
    cls = data["class"].str.lower()
    df = canonical_frame(
        len(data),
        study_id=data["folder"] + "/" + data["filename"],
        patient_id=data["patient_id"],
        split=data["split"],
        source_path=[str(root / f / n) for f, n in zip(data["folder"], data["filename"])],
    )
    df["No Finding"] = cls.map(lambda c: 1.0 if c in NORMAL else (0.0 if c in DISEASE else float("nan"))).to_numpy()
    df["Pneumonia"] = cls.map(lambda c: 1.0 if c in DISEASE else (0.0 if c in NORMAL else float("nan"))).to_numpy()
    df["class"] = data["class"].to_numpy()
    df["source"] = ("covidx:" + data["data_source"]).str.rstrip(":").to_numpy()
    return SourceTable(
        "covidx",
        df,
        drops,
        rows_read=n_read,
        info={"release": release, "train_list": str(train_list), "test_list": str(test_list)},
    )
