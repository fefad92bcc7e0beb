"""SynthCXR's binding set: multi-finding relations studies, swap foils with the caption's words, splits, roles."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from reclf.data.reports import clean_report
from reclf.data.synthetic.generate import (
    CAPTION_ROLES_FILE,
    GENERATOR_VERSION,
    ROLES_FILE,
    assign_splits,
    binding_ok,
    build_specs,
    generate,
    study_candidates,
)
from reclf.data.synthetic.report_text import binding_candidates, binding_caption, caption, plain, word_roles
from reclf.data.synthetic.vocab import RELATIONAL_FINDINGS

WORD = re.compile(r"[^\W_]+")
SIDES = {"left", "right"}


@pytest.fixture(scope="module")
def specs():
    return assign_splits(build_specs("relations", 7, 20, 200), "relations", 7)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bind") / "synth"
    generate(out, n=20, size=64, seed=4, per_class=6, sets=("relations",))
    return out


def test_single_studies_are_unchanged_and_binding_studies_follow(specs):
    single = [s for s in specs if s.task == "single"]
    binding = [s for s in specs if s.task == "binding"]
    assert len(single) == len(binding) == 200
    assert [s.study_id for s in specs] == [f"rel-{i:06d}" for i in range(400)]  # ids continue after the singles
    assert all(len(s.findings) == 1 for s in single)
    # a smaller per_class keeps the same single studies (ids, seeds, findings): earlier numbers stay comparable
    small = build_specs("relations", 7, 20, 50)
    assert [(s.study_id, s.seed, s.findings) for s in small[:50]] == [(s.study_id, s.seed, s.findings)
                                                                       for s in single[:50]]
    assert GENERATOR_VERSION == "synthcxr-1.2"


def test_binding_studies_follow_the_rules(specs):
    binding = [s for s in specs if s.task == "binding"]
    counts = Counter(len(s.findings) for s in binding)
    assert set(counts) == {2, 3} and 0.15 < counts[3] / len(binding) < 0.35
    for s in binding:
        kinds = [f.finding for f in s.findings]
        assert len(set(kinds)) == len(kinds) and set(kinds) <= set(RELATIONAL_FINDINGS)
        assert {f.side for f in s.findings} <= SIDES  # never bilateral
        assert binding_ok(s.findings)
        for a in s.findings:
            for b in s.findings:
                if a is not b and a.side == b.side:
                    assert {a.finding, b.finding} != {"pneumothorax", "pleural_effusion"}  # the clash rule
    assert sum(len({f.side for f in s.findings}) > 1 for s in binding) > 0.4 * len(binding)


def test_swap_foils_have_the_captions_words(specs):
    seen = Counter()
    for s in (s for s in specs if s.task == "binding"):
        rows = binding_candidates(s.findings, s.seed)
        assert rows == study_candidates(s)
        true = rows[0][0]
        assert rows[0][1] and rows[0][2] == "none" and true == binding_caption(s.findings, s.seed)
        assert true.count(".") == len(s.findings)  # one sentence per finding
        contrasts = [c for _, _, c in rows[1:]]
        assert len(contrasts) == len(set(contrasts)) and set(contrasts) <= {"swap_side", "swap_zone", "flip_sides"}
        sides = [f.side for f in s.findings]
        zones = [f.zone for f in s.findings if f.zone != "none"]
        assert ("swap_side" in contrasts) == (len(set(sides)) > 1)
        assert ("swap_zone" in contrasts) == (len(set(zones)) > 1)
        assert "flip_sides" in contrasts
        for text, correct, contrast in rows[1:]:
            assert not correct and text != true
            seen[contrast] += 1
            if contrast.startswith("swap"):
                assert sorted(WORD.findall(text)) == sorted(WORD.findall(true)), (true, text)
            else:  # every side flipped: the side words change, nothing else
                flip = re.sub(r"\b(left|right)\b", lambda m: {"left": "right", "right": "left"}[m.group(1)], true)
                assert text == flip
    assert seen["swap_side"] > 50 and seen["swap_zone"] > 50


def test_swap_side_moves_the_side_between_two_findings():
    from reclf.data.synthetic.findings import FindingSpec

    a = FindingSpec("consolidation", side="right", zone="upper", severity="moderate")
    b = FindingSpec("pleural_effusion", side="left", zone="none", severity="mild")
    rows = {c: t for t, _, c in binding_candidates([a, b], seed=11)}
    true, foil = rows["none"].split(". "), rows["swap_side"].split(". ")
    assert "right" in true[0] and "left" in true[1] and "left" in foil[0] and "right" in foil[1]
    assert "swap_zone" not in rows  # only one zoned finding
    c = FindingSpec("lung_lesion", side="right", zone="lower", severity="mild")
    rows = {k: t for t, _, k in binding_candidates([a, c], seed=11)}
    assert "swap_side" not in rows  # both on the right
    assert set(rows) == {"none", "swap_zone", "flip_sides"}


def test_splits_are_half_valid_half_test_per_task(specs, synth):
    for task in ("single", "binding"):
        c = Counter(s.split for s in specs if s.task == task)
        assert c == {"valid": 100, "test": 100}
    again = assign_splits(build_specs("relations", 7, 20, 200), "relations", 7)
    assert [s.split for s in again] == [s.split for s in specs]
    other = assign_splits(build_specs("relations", 8, 20, 200), "relations", 8)
    assert [s.split for s in other] != [s.split for s in specs]
    from reclf.evaluate.common import load_table

    df = pd.read_csv(synth / "relations" / "studies.csv")
    for split in ("valid", "test"):
        ids = (synth / "relations" / "splits" / f"{split}.txt").read_text().split()
        assert ids == df.loc[df["split"] == split, "study_id"].tolist()
        assert load_table(synth / "relations", splits=(split,)).df["study_id"].tolist() == ids
        assert Counter(df.loc[df["split"] == split, "task"]) == {"single": 3, "binding": 3}


def test_generated_binding_table(synth):
    folder = synth / "relations"
    df = pd.read_csv(folder / "studies.csv", keep_default_na=False)
    assert len(df) == 12 and Counter(df["task"]) == {"single": 6, "binding": 6}
    assert df.loc[df["task"] == "binding", "study_id"].tolist() == [f"rel-{i:06d}" for i in range(6, 12)]
    for _, row in df[df["task"] == "binding"].iterrows():
        anns = json.loads(row["annotations"])
        assert len(anns) in (2, 3) and row["class"] == "binding"
        for a in anns:  # every finding is rendered and named in the report
            assert (np.asarray(Image.open(folder / a["mask"])) > 0).any()
            assert float(row[a["label"]]) == 1.0
    cands = pd.read_csv(folder / "candidates.csv")
    assert list(cands.columns) == ["study_id", "text", "is_correct", "contrast"]
    binding = set(df.loc[df["task"] == "binding", "study_id"])
    assert set(cands.loc[cands["study_id"].isin(binding), "contrast"]) <= {"none", "swap_side", "swap_zone",
                                                                           "flip_sides"}
    manifest = json.loads((synth / "manifest.json").read_text())["sets"]["relations"]
    assert manifest["task"] == {"binding": 6, "single": 6} and "task_positive" not in manifest
    assert manifest["split_by_task"]["binding"] == {"test": 3, "valid": 3}


def test_roles_cover_binding_reports_and_captions(synth):
    folder = synth / "relations"
    df = pd.read_csv(folder / "studies.csv", keep_default_na=False)
    reports = [json.loads(x) for x in (folder / ROLES_FILE).read_text().splitlines()]
    captions = [json.loads(x) for x in (folder / CAPTION_ROLES_FILE).read_text().splitlines()]
    cands = pd.read_csv(folder / "candidates.csv")
    true = dict(zip(cands.loc[cands["is_correct"] == 1, "study_id"], cands.loc[cands["is_correct"] == 1, "text"]))
    assert [r["study_id"] for r in reports] == [r["study_id"] for r in captions] == df["study_id"].tolist()
    for (_, row), rep, cap_rec in zip(df.iterrows(), reports, captions, strict=True):
        anns = json.loads(row["annotations"])
        assert rep["words"] == WORD.findall(clean_report(row["report"]))
        assert cap_rec["words"] == WORD.findall(true[row["study_id"]])
        for rec in (rep, cap_rec):
            for k, a in enumerate(anns):  # every finding has linked finding and location words of its own side
                mine = [(w.lower(), r) for w, r, f in zip(rec["words"], rec["roles"], rec["finding"], strict=True)
                        if f == k]
                assert any(r == "finding" for _, r in mine), (k, rec)
                locs = {w for w, r in mine if r == "location"}
                assert (a["side"] in locs or "lingula" in locs) and not (locs & (SIDES - {a["side"]})), (a, rec)


def test_single_caption_roles_match_the_single_caption(specs):
    from reclf.data.synthetic.report_text import caption_tagged

    for s in [s for s in specs if s.task == "single"][:60]:
        tagged = caption_tagged(s.findings[0], s.seed)
        assert plain(tagged) == caption(s.findings[0], s.seed)
        assert [r.word for r in word_roles(tagged)] == WORD.findall(caption(s.findings[0], s.seed))
