"""SynthCXR word roles: reports unchanged, roles agree with the templates and with the tokenizer's words."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from reclf.data.reports import clean_report
from reclf.data.synthetic.generate import ROLES_FILE, build_specs, generate
from reclf.data.synthetic.report_text import (
    NEGATED_NOUNS,
    binding_candidates,
    compose_report,
    plain,
    relation_candidates,
    word_roles,
)
from reclf.data.synthetic.vocab import (
    BILATERAL_ZONE_PHRASES,
    CHEXPERT_LABEL,
    FINDING_SYNONYMS,
    FIXED_TEXT_ROLES,
    HEDGE_PHRASES,
    LABEL_TERMS,
    LOBES,
    NEGATION_PHRASES,
    ROLES,
    SEVERITY_ADVERBS,
    SEVERITY_WORDS,
    ZONE_PHRASES,
)

SETS = ("pretrain", "classification", "zeroshot_5x200", "retrieval_8x200", "segmentation", "relations")
WORD = re.compile(r"[^\W_]+")
#: label -> the words that name it when it is negated (templates and fixed normal statements)
NEGATED_LABEL_NOUNS: dict[str, set[str]] = {
    CHEXPERT_LABEL[f]: {w for p in nouns for w in WORD.findall(p)} for f, nouns in NEGATED_NOUNS.items()
}
NEGATED_LABEL_NOUNS["Lung Opacity"] = {"focal", "opacity"}
NEGATED_LABEL_NOUNS["Fracture"] = {"fracture"}


def _words(*phrases: str) -> set[str]:
    return {w.lower() for p in phrases for w in WORD.findall(p)}


def _reports(seeds: range, n: int = 30, per_class: int = 3):
    """(spec, report, candidates) for every study of every set, with the low-volume flag varied."""
    for seed in seeds:
        for name in SETS:
            for k, spec in enumerate(build_specs(name, seed, n, per_class)):
                low = (seed + k) % 3 == 0
                rep = compose_report(list(spec.findings), spec.view, low, spec.prior,
                                     np.random.default_rng([spec.seed, 3]))
                cands = None
                if name == "relations":
                    cands = (binding_candidates(spec.findings, spec.seed) if spec.task == "binding"
                             else relation_candidates(spec.findings[0], spec.seed))
                yield spec, rep, low, cands


def test_reports_are_byte_identical_to_the_generator_before_roles():
    """The hash of every text (report, sections, labels, relation candidates) as main wrote them
    before roles existed (computed there with the same loop); a template edit that changes one
    character of one report fails here."""
    out = []
    for spec, rep, _, cands in _reports(range(8)):
        if spec.task == "binding":  # the binding studies of the relations set came later (synthcxr-1.2)
            continue
        out.append(rep.text + "\x00" + rep.findings + "\x00" + rep.impression + "\x00"
                   + json.dumps(rep.labels, sort_keys=True))
        if cands is not None:
            out.append(json.dumps(cands))
    assert len(out) == 888
    assert hashlib.sha256("\x01".join(out).encode()).hexdigest() == (
        "81e7c628df701ddbad5d6595f98cc76cb40af021a6f5a4555e1c320e908eeadf"
    )


def _location_words(spec) -> set[str]:
    side, zone = spec.side, spec.zone
    words = _words(side, f"{side}-sided", "apical lateral perihilar bilateral both sides")
    if zone in ZONE_PHRASES:
        if (side, zone) in LOBES:
            words |= _words(LOBES[(side, zone)])
        if side == "bilateral":
            words |= _words(*(p for _, p in BILATERAL_ZONE_PHRASES[zone]))
        else:
            words |= _words(*(p.format(side=side) for _, p in ZONE_PHRASES[zone]))
    return words


def _finding_words(spec) -> set[str]:
    f = spec.finding
    extra = "enlarged enlargement haziness hazy opacities opacity patchy airspace blunting blunts pulmonary " \
            "interstitial consolidative focal nodular"
    words = _words(*FINDING_SYNONYMS[f], *LABEL_TERMS[CHEXPERT_LABEL[f]], extra)
    if f == "support_devices":
        words |= _words(*FIXED_TEXT_ROLES["finding"])
    return words


def test_roles_follow_the_templates_on_many_seeds():
    sides = {"left", "right", "bilateral"}
    n_reports = n_linked = 0
    for spec, rep, _, _ in _reports(range(25)):
        n_reports += 1
        roles = rep.roles
        assert plain(rep.tagged) == rep.text
        assert [r.word for r in roles] == WORD.findall(clean_report(rep.text))
        assert {r.role for r in roles} <= set(ROLES)
        labels = rep.labels
        for k, f in enumerate(spec.findings):
            mine = [r for r in roles if r.finding == k]
            by = {role: {r.word.lower() for r in mine if r.role == role} for role in ROLES}
            assert by["finding"], (spec, rep.text)
            assert by["finding"] <= _finding_words(f), (by["finding"], rep.text)
            assert by["location"] <= _location_words(f), (by["location"], f, rep.text)
            if f.side in ("left", "right"):  # the side a location word names is the finding's own
                assert not (by["location"] & (sides - {f.side})), (f, rep.text)
            if f.finding in SEVERITY_WORDS:
                allowed = _words(*SEVERITY_WORDS[f.finding][f.severity], *SEVERITY_ADVERBS[f.severity])
                assert by["severity"] and by["severity"] <= allowed, (by["severity"], f, rep.text)
            else:
                assert not by["severity"]
            hedges = _words(*HEDGE_PHRASES)
            if f.certainty == "uncertain":
                assert by["cue"] and by["cue"] <= hedges, (f, rep.text)
            else:
                assert not by["cue"], (f, rep.text)
            assert {r.section for r in mine} <= {"findings", "impression"}
            if f.finding != "support_devices":
                assert {"findings", "impression"} <= {r.section for r in mine if r.role == "finding"}
            n_linked += len(mine)
        # unlinked finding words are negated findings: their labels are 0 (or a stated finding's)
        for r in roles:
            if r.role == "finding" and r.finding < 0:
                names = [lab for lab, nouns in NEGATED_LABEL_NOUNS.items() if r.word.lower() in nouns]
                assert names and any(labels[n] == 0.0 for n in names), (r, rep.text)
            if r.role == "cue" and r.finding < 0:
                assert r.word.lower() in _words(*NEGATION_PHRASES, "clear"), (r, rep.text)
            if r.role == "header":
                assert r.word.isupper(), (r, rep.text)
        # filler never names a side or any label's terms
        named = sides | _words(*(t for terms in LABEL_TERMS.values() for t in terms))
        filler = {r.word.lower() for r in roles if r.role == "filler"}
        assert not (filler & named), (filler & named, rep.text)
    assert n_reports > 2000 and n_linked > 10000


def test_role_words_are_the_tokenizer_words():
    from transformers import AutoTokenizer

    from reclf.data.tokenization import WordTokenizer
    from reclf.models.text import minilm_dir

    tok = WordTokenizer(AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True), max_tokens=512)
    reps = [rep for _, rep, _, _ in _reports(range(2))]
    tokens = tok([r.text for r in reps])
    for rep, words in zip(reps, tokens.words, strict=True):
        assert words == [r.word.lower() for r in rep.roles]


def test_word_roles_reject_a_split_word():
    with pytest.raises(ValueError, match="straddles"):
        word_roles("<f:pneumo>thorax.")


def test_generate_writes_the_roles_side_file(tmp_path):
    out = tmp_path / "synth"
    generate(out, n=20, size=64, seed=2, per_class=2, sets=("relations", "zeroshot_5x200"))
    import pandas as pd

    for name in ("relations", "zeroshot_5x200"):
        df = pd.read_csv(out / name / "studies.csv", keep_default_na=False)
        lines = [json.loads(x) for x in (out / name / ROLES_FILE).read_text().splitlines()]
        assert [x["study_id"] for x in lines] == df["study_id"].tolist()
        for rec, report, anns in zip(lines, df["report"], df["annotations"], strict=True):
            assert rec["words"] == WORD.findall(clean_report(report))
            assert len(rec["roles"]) == len(rec["finding"]) == len(rec["section"]) == len(rec["words"])
            n = len(json.loads(anns))
            assert set(rec["finding"]) <= set(range(-1, n)) and (n == 0 or 0 in rec["finding"])
