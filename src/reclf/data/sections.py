"""FINDINGS / IMPRESSION extraction from raw radiology report text, by written-down rules.

Every MIMIC-CXR code base sections reports differently (MGCA vendors the MIT-LCP parser, CheXzero takes the text
after the last ``IMPRESSION:``, others a "longest section" rule), and that difference alone moves results. Here the
rules are few, explicit and tested:

1. **Preamble.** Everything up to and including a line that reads ``FINAL REPORT`` (any case) is dropped; in
   MIMIC-CXR it holds the wet read and the exam banner.
2. **Headers.** A header is a line that starts (after blanks) with a known section name followed by a colon, in
   any case and with any spacing (``IMPRESSION:``, ``Findings :``, ``impressions:``). Text on the header line after
   the colon belongs to the section. An UPPER-CASE known name also counts in the middle of a line (after a blank),
   as in flattened one-line reports (``... clear. IMPRESSION: normal.``). Only names in the vocabularies below are
   headers, so ``LUNGS: clear`` inside a findings section stays findings text.
3. **Mapping.** ``FINDINGS``/``FINDING`` -> findings; ``IMPRESSION(S)``/``CONCLUSION(S)``/``SUMMARY`` -> impression;
   a combined ``FINDINGS AND IMPRESSION`` (or ``/``, ``&``) section -> impression. Every other known header
   (``INDICATION``, ``HISTORY``, ``COMPARISON``, ``TECHNIQUE``, ``EXAMINATION``, ``NOTIFICATION``, ...) ends the
   section before it and is not kept.
4. **Repeats.** A section that appears more than once is the concatenation of its parts, in order.
5. **No headers.** Text before the first header (all of the text when there is no header) is used as the findings
   when the report has no findings header of its own; otherwise it is ignored.
6. **Whitespace.** Runs of whitespace (newlines included) become one space; de-identification marks (``___``) are
   kept as they are.

A report with neither findings nor impression after these rules is reported as ``empty`` and its study should be
dropped (and counted) by the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FINDINGS_HEADERS = frozenset({"findings", "finding"})
IMPRESSION_HEADERS = frozenset({"impression", "impressions", "conclusion", "conclusions", "summary"})
COMBINED_HEADERS = frozenset(
    {
        "findings and impression",
        "findings/impression",
        "findings & impression",
        "impression and findings",
        "impression/findings",
        "findings and impressions",
    }
)
OTHER_HEADERS = frozenset(
    {
        "addendum",
        "clinical data",
        "clinical history",
        "clinical indication",
        "clinical information",
        "comparison",
        "comparisons",
        "exam",
        "examination",
        "history",
        "indication",
        "indications",
        "note",
        "notification",
        "patient history",
        "procedure",
        "reason for exam",
        "reason for examination",
        "reason for study",
        "recommendation",
        "recommendations",
        "recommendation(s)",
        "reference exam",
        "study",
        "technique",
        "type of exam",
        "type of examination",
        "wet read",
    }
)
ALL_HEADERS = FINDINGS_HEADERS | IMPRESSION_HEADERS | COMBINED_HEADERS | OTHER_HEADERS

_PREAMBLE = re.compile(r"^[ \t]*FINAL REPORT[ \t]*$", re.IGNORECASE | re.MULTILINE)
_HEADER = re.compile(r"^[ \t]*([A-Za-z][A-Za-z /&()]{0,40}?)[ \t]*:", re.MULTILINE)
_INLINE_HEADER = re.compile(r"(?<=\s)([A-Z][A-Z /&()]{0,40}?)[ \t]*:")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ReportSections:
    """The sections of one report. ``text`` is the whole report after preamble removal, whitespace-normalised."""

    findings: str
    impression: str
    text: str
    headers: tuple[str, ...]  # the recognised headers, normalised, in order

    @property
    def empty(self) -> bool:
        """True when the report has neither findings nor impression (the caller drops it)."""
        return not self.findings and not self.impression


def normalise_header(name: str) -> str:
    return _SPACE.sub(" ", name.strip().lower())


def clean_text(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def strip_preamble(text: str) -> str:
    """Drop everything up to and including the last ``FINAL REPORT`` line (rule 1)."""
    matches = list(_PREAMBLE.finditer(text))
    return text[matches[-1].end() :] if matches else text


def extract_sections(raw: str) -> ReportSections:
    """Apply the rules in the module docstring to one raw report."""
    body = strip_preamble(raw.replace("\r\n", "\n").replace("\r", "\n"))
    found: dict[int, tuple[int, int, str]] = {}  # header start -> (header start, text start, normalised name)
    for pattern in (_HEADER, _INLINE_HEADER):
        for m in pattern.finditer(body):
            name = normalise_header(m.group(1))
            if name not in ALL_HEADERS:
                # An inline match may have swallowed a preceding upper-case word ("CLEAR IMPRESSION:").
                tail = next((t for t in ALL_HEADERS if name.endswith(" " + t)), None)
                if pattern is _HEADER or tail is None:
                    continue
                start = m.start(1) + len(m.group(1)) - len(tail)
                found.setdefault(start, (start, m.end(), tail))
                continue
            found.setdefault(m.start(1), (m.start(1), m.end(), name))
    marks = [found[k] for k in sorted(found)]
    findings: list[str] = []
    impression: list[str] = []
    for i, (_, start, name) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else len(body)
        part = clean_text(body[start:end])
        if not part:
            continue
        if name in FINDINGS_HEADERS:
            findings.append(part)
        elif name in IMPRESSION_HEADERS or name in COMBINED_HEADERS:
            impression.append(part)
    names = tuple(name for _, _, name in marks)
    if not any(n in FINDINGS_HEADERS for n in names):
        lead = clean_text(body[: marks[0][0]] if marks else body)
        if lead:
            findings.insert(0, lead)
    return ReportSections(
        findings=" ".join(findings), impression=" ".join(impression), text=clean_text(body), headers=names
    )
