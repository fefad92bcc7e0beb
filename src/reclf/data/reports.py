"""Study row -> the report text the model sees, and the report's sentences.

Why one module: the text a model is trained on and the text it is evaluated on must go through the
same cleaning, or word-level alignment learns artefacts (MIMIC line wraps, de-identification
blanks, list bullets) that inference never sees. Everything here is pure string work (no tokenizer).

The cleaned text is a single line in which every hard break of the source (a paragraph break, a
list bullet, the seam between FINDINGS and IMPRESSION) ends with sentence punctuation, so that
:func:`split_sentences` recovers the same sentences from the cleaned text alone. Cleaning is
idempotent: ``clean_report(clean_report(x)) == clean_report(x)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: section names accepted by :func:`report_text` (``report`` = the full report text)
SECTIONS: tuple[str, ...] = ("findings", "impression", "report")
DEFAULT_SECTIONS: tuple[str, ...] = ("findings", "impression")

# Tokens that end with a period without ending a sentence. Units such as "cm." are NOT here:
# in radiology text "measures 2 cm." usually does end the sentence.
ABBREVIATIONS: frozenset[str] = frozenset(
    {"dr", "mr", "mrs", "ms", "prof", "vs", "e.g", "i.e", "eg", "ie", "approx", "cf", "fig", "incl", "resp", "ca", "st"}
)

_DEID = re.compile(r"_{2,}")  # MIMIC de-identification blanks: "___"
_LINE_BULLET = re.compile(r"(?m)^[ \t]*(?:\d{1,2}[.)]|[-*\u2022])[ \t]+")  # "1. ", "2) ", "- ", "• " at line start
# an inline list number right after sentence punctuation or a colon: "... effusion. 2. Stable ..."
_INLINE_BULLET = re.compile(r"([.;:!?])[ \t]+\d{1,2}[.)][ \t]+(?=\S)")
_PARAGRAPH = re.compile(r"\n[ \t]*\n+")
_WS = re.compile(r"\s+")
_BREAK = "\x00"  # internal marker of a hard sentence break during cleaning
_TERMINAL = ".!?"
# candidate sentence ends: a run of [.!?] followed by whitespace or the end of the text
_END = re.compile(r"[.!?]+(?=\s|$)")


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return False


def _as_text(value: Any, what: str) -> str:
    """A section value as a string: None/NaN (pandas' missing) -> ""; anything else must be a str."""
    if _is_missing(value):
        return ""
    if not isinstance(value, str):
        raise TypeError(f"report section {what!r} must be a string (or missing), got {type(value).__name__}")
    return value


def _terminate(text: str) -> str:
    """Add a period if ``text`` does not already end a sentence (so joins keep the boundary).

    A piece ending with a colon is a header ("FINDINGS:") that introduces what follows: kept as is.
    """
    text = text.rstrip()
    if text and text[-1] not in _TERMINAL + ":":
        text += "."
    return text


def clean_report(text: str, deid_token: str = "") -> str:
    """Normalise one report (or section) to the single-line form the tokenizer sees.

    - de-identification blanks (``___``) become ``deid_token`` (default: removed);
    - list bullets (``1.``, ``2)``, ``-``, ``•`` at a line start, or a number right after a
      sentence end: ``"... effusion. 2. Stable ..."``) are removed and become sentence breaks;
    - paragraph breaks (blank lines) are sentence breaks; single newlines are MIMIC's hard line
      wraps inside a sentence and become spaces;
    - every sentence break ends with ``.`` (added only when no ``.!?`` is there already, and not
      after a header colon such as ``FINDINGS:``);
    - whitespace runs collapse to one space; the result is stripped.

    Decimals ("2.5 cm") and measurements are left alone.
    """
    if _is_missing(text):
        return ""
    if not isinstance(text, str):
        raise TypeError(f"clean_report expects a string, got {type(text).__name__}")
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace(_BREAK, " ")
    text = _DEID.sub(deid_token, text)
    text = _LINE_BULLET.sub(_BREAK, text)
    text = _INLINE_BULLET.sub(r"\1 ", text)
    text = _PARAGRAPH.sub(_BREAK, text)
    pieces = [_WS.sub(" ", p).strip() for p in text.split(_BREAK)]
    pieces = [p for p in pieces if p]
    if not pieces:
        return ""
    # every piece but the last ends a sentence; the last keeps its own ending (a prompt may lack one)
    out = " ".join([_terminate(p) for p in pieces[:-1]] + [pieces[-1]])
    return _WS.sub(" ", out).strip()


def report_text(
    findings: Any,
    impression: Any,
    report: Any = "",
    sections: Sequence[str] = DEFAULT_SECTIONS,
    deid_token: str = "",
) -> str:
    """The cleaned report text of one study from its sections.

    ``sections`` names what to use, in order (``findings``, ``impression``, ``report``); the default
    is findings + impression, as in GLoRIA/MGCA. When the chosen sections are all empty (missing
    findings and impression, as in ~a quarter of MIMIC studies), the full ``report`` is used
    instead, so no study silently loses its text. Missing values (None / NaN) count as empty.
    Returns ``""`` only when the study has no text at all (the caller counts such rows as bad).
    """
    if isinstance(sections, str):
        sections = [sections]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown report section {unknown[0]!r}; valid sections: {', '.join(SECTIONS)}")
    values = {
        "findings": _as_text(findings, "findings"),
        "impression": _as_text(impression, "impression"),
        "report": _as_text(report, "report"),
    }
    parts = [clean_report(values[s], deid_token) for s in sections]
    parts = [p for p in parts if p]
    if not parts:
        full = clean_report(values["report"], deid_token)
        return full
    return " ".join([_terminate(p) for p in parts[:-1]] + [parts[-1]])


def study_report_text(row: Mapping[str, Any], sections: Sequence[str] = DEFAULT_SECTIONS) -> str:
    """:func:`report_text` for one row of the canonical study table (a dict or a pandas Series)."""
    return report_text(row.get("findings"), row.get("impression"), row.get("report"), sections)


# ---------------------------------------------------------------------------------------------
# sentences


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the period at ``text[dot]`` closes an abbreviation ("Dr.", "e.g.", "A.") rather than a sentence."""
    start = dot
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    token = text[start:dot].lstrip("([{\"'").lower()
    if not token:
        return False
    if token in ABBREVIATIONS:
        return True
    # a single letter ("J. Smith", "A. fib") - but not a lone digit ("grade 2.")
    return len(token) == 1 and token.isalpha()


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the sentences of ``text`` (end exclusive, trimmed).

    A sentence ends at a run of ``.!?`` followed by whitespace or the end of the text, unless the
    period closes a known abbreviation or a single-letter initial. Decimals ("2.5 cm") and
    dotted numbers never split, because their period is not followed by whitespace. A newline
    also ends a sentence (for text that was not cleaned). Spans without any letter or digit
    (stray punctuation) are dropped. The spans index ``text`` itself, so word offsets from a
    tokenizer can be located in them.
    """
    if not text:
        return []
    ends: list[int] = []
    for m in _END.finditer(text):
        if m.group() == "." and _is_abbreviation(text, m.start()):
            continue
        ends.append(m.end())
    ends.extend(m.start() for m in re.finditer(r"\n", text))
    ends.append(len(text))
    spans: list[tuple[int, int]] = []
    start = 0
    for end in sorted(set(ends)):
        if end <= start:
            continue
        s, e = start, end
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if any(ch.isalnum() for ch in text[s:e]):
            spans.append((s, e))
        start = end
    return spans


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (see :func:`sentence_spans` for the rules)."""
    return [text[s:e] for s, e in sentence_spans(text)]


def augment_sentences(
    text: str,
    rng: np.random.Generator,
    shuffle: bool = True,
    max_sentences: int | None = None,
    drop_prob: float = 0.0,
) -> str:
    """A text augmentation: shuffle, drop and/or cap the sentences of a report (seeded by ``rng``).

    Radiology sentences are mostly independent statements, so their order carries little meaning;
    shuffling them (and sampling a subset, GLoRIA samples a single one) is a cheap augmentation.
    At least one sentence is always kept. ``max_sentences=1`` with ``shuffle=True`` is GLoRIA's
    "one random sentence". The result is joined with single spaces and each sentence keeps its
    own punctuation (one is added where it is missing, so sentence ids stay recoverable).
    """
    if not 0.0 <= drop_prob < 1.0:
        raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
    if max_sentences is not None and max_sentences < 1:
        raise ValueError(f"max_sentences must be >= 1 or None, got {max_sentences}")
    sentences = split_sentences(text)
    if len(sentences) <= 1:
        return text
    order = np.arange(len(sentences))
    if drop_prob > 0.0:
        keep = rng.random(len(sentences)) >= drop_prob
        if not keep.any():
            keep[rng.integers(len(sentences))] = True
        order = order[keep]
    if shuffle:
        order = rng.permutation(order)
    if max_sentences is not None:
        order = order[:max_sentences]
    return " ".join(_terminate(sentences[i]) for i in order)


# ---------------------------------------------------------------------------------------------
# binding-aware negatives

_SIDE_SWAP = {"left": "right", "right": "left"}
_ZONE_SWAP = {"upper": "lower", "lower": "upper"}


def swap_laterality(text: str, zones: bool = False) -> str:
    """The report with ``left`` <-> ``right`` exchanged (and with ``zones``, ``upper`` <-> ``lower``): the
    same words bound to other places, a negative that only a model binding words to places can reject.

    The rule is lexical and documented, the same for SynthCXR and real reports: whole words only, any
    case (``Left`` -> ``Right``), other words untouched (``bilateral``, ``leftward`` stay). With two
    findings on opposite sides it exchanges their sides; with one, it flips it. A report with none of
    these words comes back unchanged (the caller then has no negative for it).
    """
    table = _SIDE_SWAP | (_ZONE_SWAP if zones else {})
    pattern = _SWAP_PATTERNS[zones]

    def repl(m: re.Match[str]) -> str:
        word = m.group(0)
        out = table[word.lower()]
        if word.isupper():
            return out.upper()
        return out.capitalize() if word[0].isupper() else out

    return pattern.sub(repl, text)


def names_both_sides(text: str) -> bool:
    """Whether a report names both ``left`` and ``right`` (whole words, any case): its ``swap_laterality`` twin then
    names both sides too, so no side-only reading (something on the left?) tells them apart; two findings on
    opposite sides are told from their swapped twin only by binding each to its own side."""
    return {m.lower() for m in _SWAP_PATTERNS[False].findall(text)} == {"left", "right"}


_SWAP_PATTERNS = {
    False: re.compile(r"\b(?:left|right)\b", re.IGNORECASE),
    True: re.compile(r"\b(?:left|right|upper|lower)\b", re.IGNORECASE),
}
