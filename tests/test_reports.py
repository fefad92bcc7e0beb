"""Report text: section choice, cleaning, sentence splitting, sentence augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reclf.data.reports import (
    augment_sentences,
    clean_report,
    report_text,
    sentence_spans,
    split_sentences,
    study_report_text,
)

MIMIC = """                                 FINAL REPORT
 INDICATION:  ___ year old man with dyspnea.

 FINDINGS:
 1. No pneumothorax. 2. The cardiomediastinal silhouette is
 within normal limits. A 2.5 cm nodule in the
 left upper lobe, e.g. a granuloma

 - Stable small left pleural effusion
 - Dr. ___ was notified at ___ by ___
"""


def test_clean_report_mimic_rules() -> None:
    text = clean_report(MIMIC)
    assert "\n" not in text and "  " not in text and "_" not in text
    assert "1." not in text and "2. The" not in text  # bullets removed
    assert "2.5 cm" in text  # decimals kept
    assert "silhouette is within normal limits" in text  # hard line wrap joined
    # paragraph / bullet breaks end with a period
    assert "granuloma. Stable small left pleural effusion. Dr. was notified at by" in text
    assert clean_report(text) == text  # idempotent


def test_clean_report_keeps_number_at_sentence_end() -> None:
    assert clean_report("Heart size is grade 2. No effusion.") == "Heart size is grade 2. No effusion."


def test_clean_report_missing_values() -> None:
    assert clean_report(None) == ""  # type: ignore[arg-type]
    assert clean_report(float("nan")) == ""  # type: ignore[arg-type]
    assert clean_report("   \n\n ") == ""


def test_split_sentences_abbreviations_and_decimals() -> None:
    text = clean_report(MIMIC)
    sents = split_sentences(text)
    assert sents == [
        "FINAL REPORT INDICATION: year old man with dyspnea.",
        "FINDINGS: No pneumothorax.",
        "The cardiomediastinal silhouette is within normal limits.",
        "A 2.5 cm nodule in the left upper lobe, e.g. a granuloma.",
        "Stable small left pleural effusion.",
        "Dr. was notified at by",
    ]
    assert split_sentences("Size 3.2 x 1.5 cm. Approx. 4 mm shift! Is it new? No.") == [
        "Size 3.2 x 1.5 cm.",
        "Approx. 4 mm shift!",
        "Is it new?",
        "No.",
    ]
    assert split_sentences("") == [] and split_sentences(" . ") == []


def test_sentence_spans_index_the_text() -> None:
    text = "  No effusion.  Heart normal.\nLungs clear"
    spans = sentence_spans(text)
    assert [text[s:e] for s, e in spans] == ["No effusion.", "Heart normal.", "Lungs clear"]


def test_report_text_sections_and_fallback() -> None:
    assert report_text("Lungs are clear", "No acute process.", "FULL") == "Lungs are clear. No acute process."
    assert report_text("Lungs clear.", "No acute.", "FULL", sections=["impression"]) == "No acute."
    assert report_text("Lungs clear.", "No acute.", "FULL", sections=["impression", "findings"]) == (
        "No acute. Lungs clear."
    )
    # missing sections (None / NaN from pandas) fall back to the full report
    assert report_text(None, math.nan, "Full report\n\nhere") == "Full report. here"
    assert report_text("", "  ", math.nan) == ""
    with pytest.raises(ValueError, match="valid sections"):
        report_text("a", "b", "c", sections=["history"])
    with pytest.raises(TypeError, match="findings"):
        report_text(3, "b", "c")
    row = {"findings": math.nan, "impression": "No pneumothorax", "report": "x"}
    assert study_report_text(row) == "No pneumothorax"


def test_augment_sentences_is_seeded_and_keeps_sentences() -> None:
    text = "A one. B two. C three. D four. E five."
    a = augment_sentences(text, np.random.default_rng(1))
    b = augment_sentences(text, np.random.default_rng(1))
    assert a == b
    assert sorted(split_sentences(a)) == sorted(split_sentences(text))
    outs = {augment_sentences(text, np.random.default_rng(s)) for s in range(10)}
    assert len(outs) > 1  # actually shuffles
    one = augment_sentences(text, np.random.default_rng(2), max_sentences=1)
    assert len(split_sentences(one)) == 1 and one in split_sentences(text)
    dropped = augment_sentences(text, np.random.default_rng(3), shuffle=False, drop_prob=0.9)
    kept = split_sentences(dropped)
    assert 1 <= len(kept) <= 5
    order = [split_sentences(text).index(s) for s in kept]
    assert order == sorted(order)  # no shuffle: original order
    assert augment_sentences("Single sentence", np.random.default_rng(0)) == "Single sentence"
    with pytest.raises(ValueError):
        augment_sentences(text, np.random.default_rng(0), drop_prob=1.0)
