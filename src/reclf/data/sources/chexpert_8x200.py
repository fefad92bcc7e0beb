"""CheXpert 8x200: the class-level retrieval set of ConVIRT / GLoRIA / CXR-CLIP, built reproducibly.

No repository ships its construction code or ID lists, so
reclf defines and publishes its own: 8 classes (Atelectasis, Cardiomegaly, Edema, Fracture, No
Finding, Pleural Effusion, Pneumonia, Pneumothorax), 200 *exclusively positive* frontal
``train.csv`` images each — the class is 1 and none of the other 12 findings is positive or
uncertain (blank counts as negative; Support Devices is not a finding and is ignored) — drawn with
a generator seeded by (seed, class). Every patient with an image in it is removed from training,
as for the 5x200 set. Numbers on it are *not* comparable to the papers' private sets.

CheXpert ships no reports, so the text side is one query sentence per class from
``prompts/chexpert_8x200.yaml`` (reclf's own wording, versioned), written to the ``report`` and
``impression`` columns: report->image retrieval is then the papers' text-query protocol and
Precision@K on classes the metric; image->report ranks the 8 queries.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reclf.data.studies import CHEXPERT_LABELS
from reclf.utils.seed import rng

RETRIEVAL_CLASSES = ("Atelectasis", "Cardiomegaly", "Edema", "Fracture", "No Finding", "Pleural Effusion",
                     "Pneumonia", "Pneumothorax")
RETRIEVAL_NAME = "retrieval_8x200"
IGNORED = ("Support Devices",)


def retrieval_candidates(df: pd.DataFrame) -> pd.Series:
    """For each (frontal) row, the 8x200 class it is exclusively positive for ("" when none)."""
    findings = [c for c in CHEXPERT_LABELS if c not in IGNORED]
    positive_or_uncertain = df[findings].isin([1.0, -1.0])
    cls = pd.Series("", index=df.index)
    for c in RETRIEVAL_CLASSES:
        others = [o for o in findings if o != c]
        ok = (df[c] == 1.0) & ~positive_or_uncertain[others].any(axis=1)
        cls[ok & (cls == "")] = c
    return cls


def query_sentences() -> tuple[dict[str, str], int | str]:
    """The class query sentences and the prompt file's version."""
    from reclf.data.prompts import load_prompts

    ps = load_prompts("chexpert_8x200")
    return {c: ps.classes[c][0] for c in RETRIEVAL_CLASSES}, ps.version


def build_retrieval(df: pd.DataFrame, per_class: int, seed: int, drops) -> pd.DataFrame:
    """Draw ``per_class`` exclusively positive images per class (seeded); ``df`` holds frontal train rows."""
    cls = retrieval_candidates(df)
    queries, version = query_sentences()
    picks, counts = [], {}
    for c in RETRIEVAL_CLASSES:
        pool = df.index[cls == c]
        pool = pool[np.argsort(df.loc[pool, "study_id"].to_numpy(), kind="stable")]
        n = min(per_class, len(pool))
        counts[c] = {"candidates": int(len(pool)), "drawn": int(n)}
        chosen = np.sort(rng(seed, "chexpert-8x200", c).choice(len(pool), size=n, replace=False))
        picks.append(df.loc[pool[chosen]].assign(**{"class": c, "report": queries[c], "impression": queries[c]}))
    drops.note(RETRIEVAL_NAME, counts | {"query_file_version": version})
    short = sorted(c for c, v in counts.items() if v["drawn"] < per_class)
    if short:
        drops.note(f"{RETRIEVAL_NAME}_short", f"fewer than {per_class} candidates for {short}")
    out = pd.concat(picks, ignore_index=True)
    out["split"] = "test"
    return out
