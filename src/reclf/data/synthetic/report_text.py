"""MIMIC-CXR-style report text for a SynthCXR study, and the labels that text implies.

A report is built sentence by sentence; every sentence carries the labels it states, so the
labels ALWAYS agree with the text (the rules are in ``docs/synthcxr.md``):

* a finding stated plainly -> 1.0; stated with a hedge ("may represent", "possible") -> -1.0;
  named in a negation ("No pneumothorax or pleural effusion.", "Heart size is normal.") -> 0.0;
  never named -> empty (NaN);
* several sentences about one label combine by priority 1 > -1 > 0;
* parents follow their children (``vocab.PARENT_LABELS``);
* "No Finding" is 1.0 when no label other than Support Devices is 1 or -1, else empty.

Phrasing is drawn per sentence from several templates, synonyms, location and severity words,
so no fixed string identifies a finding. Every random choice is one ``rng.random()`` draw, so
two calls with generators in the same state and specs differing in one attribute produce
parallel text (the relation foils rely on this).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

import numpy as np

from reclf.data.reports import clean_report
from reclf.data.studies import CHEXPERT_LABELS
from reclf.data.synthetic.findings import FindingSpec
from reclf.data.synthetic.vocab import (
    BILATERAL_ZONE_PHRASES,
    CHEXPERT_LABEL,
    DEVICE_KINDS,
    FILLER_SENTENCES,
    FIXED_TEXT_ROLES,
    LOBES,
    NORMAL_IMPRESSIONS,
    NORMAL_STATEMENTS,
    OPACITY_FINDINGS,
    PARENT_LABELS,
    SEVERITY_ADVERBS,
    SEVERITY_WORDS,
    ZONE_PHRASES,
)

PRIORITY = {1.0: 3, -1.0: 2, 0.0: 1}

#: Nouns used when a finding is negated.
NEGATED_NOUNS: dict[str, list[str]] = {
    "pneumothorax": ["pneumothorax"],
    "pleural_effusion": ["pleural effusion", "effusion"],
    "consolidation": ["focal consolidation", "consolidation"],
    "edema": ["pulmonary edema", "edema"],
    "pneumonia": ["pneumonia"],
    "atelectasis": ["atelectasis"],
    "lung_lesion": ["suspicious pulmonary nodule", "pulmonary nodule"],
}
#: The noun of a relation negation foil ("No pneumothorax.").
FOIL_NEGATIONS: dict[str, str] = {
    "atelectasis": "atelectasis",
    "consolidation": "consolidation",
    "pleural_effusion": "pleural effusion",
    "pneumothorax": "pneumothorax",
    "pneumonia": "pneumonia",
    "lung_lesion": "pulmonary nodule or mass",
    "edema": "pulmonary edema",
    "cardiomegaly": "cardiomegaly",
}
INDICATIONS = [
    "___ year old with shortness of breath.",
    "Cough and fever.",
    "___ with chest pain, evaluate for acute process.",
    "Dyspnea.",
    "Evaluate for interval change.",
    "Preoperative assessment.",
]


def pick(options, rng: np.random.Generator):
    """One uniform choice that always consumes exactly one draw (keeps parallel texts aligned)."""
    return options[min(int(rng.random() * len(options)), len(options) - 1)]


# --------------------------------------------------------------------------------------------- word roles
# Templates write *tagged* text: ``<c:text>`` marks ``text`` with the role of code ``c``
# (:data:`ROLE_CODES`); ``<ck:text>`` also links it to finding ``k`` of the study (its index in the
# ``annotations`` column). Untagged words are filler. :func:`plain` strips the tags, which gives
# exactly the text the generator wrote before roles existed (``tests/test_synth_roles.py`` pins it).

#: Tag code -> role (``n``: a list number, which :func:`reclf.data.reports.clean_report` removes).
ROLE_CODES: dict[str, str] = {
    "f": "finding",
    "l": "location",
    "s": "severity",
    "c": "cue",
    "a": "anatomy",
    "h": "header",
    "n": "number",
}
_CODE_OF = {v: k for k, v in ROLE_CODES.items()}
_TAG = re.compile(r"<([a-z])(\d*):([^<>]*)>")
_OPEN = re.compile(r"^<([a-z])(\d*):")
_WORD = re.compile(r"[^\W_]+")  # a pre-tokenizer word with a letter or digit (BERT rule, ASCII text)


def tag(role: str, text: str) -> str:
    """``text`` marked with ``role`` (empty text stays empty)."""
    return f"<{_CODE_OF[role]}:{text}>" if text else text


def F(text: str) -> str:  # noqa: N802 - one-letter template helpers keep the templates readable
    return tag("finding", text)


def L(text: str) -> str:  # noqa: N802
    return tag("location", text)


def S(text: str) -> str:  # noqa: N802
    return tag("severity", text)


def C(text: str) -> str:  # noqa: N802
    return tag("cue", text)


def A(text: str) -> str:  # noqa: N802
    return tag("anatomy", text)


def H(text: str) -> str:  # noqa: N802
    return tag("header", text)


def plain(text: str) -> str:
    """Tagged text -> the report text (tags removed)."""
    return _TAG.sub(r"\3", text)


def link(text: str, finding: int) -> str:
    """Link the finding / location / severity / cue tags of ``text`` to finding ``finding`` (-1: none)."""
    if finding < 0:
        return text
    return re.sub(r"<([flsc]):", rf"<\g<1>{finding}:", text)


def cap(text: str) -> str:
    """Upper-case the first letter (the first letter inside the tag when ``text`` starts with one)."""
    m = _OPEN.match(text)
    i = m.end() if m else 0
    return text[:i] + text[i : i + 1].upper() + text[i + 1 :]


def uncap(text: str) -> str:
    m = _OPEN.match(text)
    i = m.end() if m else 0
    return text[:i] + text[i : i + 1].lower() + text[i + 1 :]


def article(word: str) -> str:
    word = plain(word)
    return "an" if word[:1].lower() in "aeio" or word.startswith(("8 ", "11 ", "18 ")) else "a"


_LEXICON: dict[tuple[str, ...], tuple[re.Pattern[str], dict[str, str]]] = {}


def mark(text: str, roles: tuple[str, ...] = ("finding", "anatomy", "cue")) -> str:
    """Tag the phrases of :data:`vocab.FIXED_TEXT_ROLES` (of ``roles``) in the untagged parts of ``text``.

    Fixed sentences (normal statements, fillers, indications, device phrases) get their roles this
    way; the longest phrase wins, matched case-insensitively on word boundaries.
    """
    if roles not in _LEXICON:
        terms = {t: r for r in roles for t in FIXED_TEXT_ROLES[r]}
        alts = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
        _LEXICON[roles] = (re.compile(rf"\b(?:{alts})\b", re.IGNORECASE), terms)
    pattern, terms = _LEXICON[roles]
    parts = re.split(r"(<[a-z]\d*:[^<>]*>)", text)
    return "".join(
        p if _TAG.fullmatch(p) else pattern.sub(lambda m: tag(terms[m.group(0).lower()], m.group(0)), p)
        for p in parts
    )


@dataclass
class WordRole:
    """One word of a report (a pre-tokenizer word with a letter or digit) and its role.

    ``finding``: index into the study's ``annotations`` of the finding the word describes (the
    finding, location, severity and cue words of a sentence about a present or hedged finding),
    else -1 (negated findings, normal statements, fillers). ``section``: ``examination``,
    ``indication``, ``comparison``, ``findings`` or ``impression``.
    """

    word: str
    role: str
    finding: int
    section: str


_SECTION_OF_HEADER = {
    "EXAMINATION": "examination",
    "INDICATION": "indication",
    "COMPARISON": "comparison",
    "FINDINGS": "findings",
    "IMPRESSION": "impression",
}


def word_roles(tagged: str) -> list[WordRole]:
    """The words of ``clean_report(plain(tagged))``, in reading order, with their roles.

    Raises ``ValueError`` when a word straddles a tag boundary or when the words differ from the
    cleaned text's words (a template bug: the roles would not line up with what a tokenizer sees).
    """
    spans: list[tuple[str, str, int]] = []  # (text, role, finding)
    pos = 0
    for m in _TAG.finditer(tagged):
        if m.start() > pos:
            spans.append((tagged[pos : m.start()], "filler", -1))
        spans.append((m.group(3), ROLE_CODES[m.group(1)], int(m.group(2)) if m.group(2) else -1))
        pos = m.end()
    if pos < len(tagged):
        spans.append((tagged[pos:], "filler", -1))
    out: list[WordRole] = []
    section = "findings"
    prev_alnum = False
    for text, role, finding in spans:
        if not text:
            continue
        if role == "header":
            section = _SECTION_OF_HEADER.get(text.split(":")[0].strip().upper(), section)
        if prev_alnum and _WORD.match(text[0]):
            raise ValueError(f"a word straddles a role boundary at {text!r} in {plain(tagged)!r}")
        out += [WordRole(w, role, finding, section) for w in _WORD.findall(text) if role != "number"]
        prev_alnum = _WORD.match(text[-1]) is not None
    if [r.word for r in out] != _WORD.findall(clean_report(plain(tagged))):
        raise ValueError(f"word roles do not line up with the cleaned report {plain(tagged)!r}")
    return out


@dataclass
class Sentence:
    """A sentence (tagged text, see :func:`plain`) and the labels it states (label -> 1 / 0 / -1)."""

    text: str
    labels: dict[str, float] = field(default_factory=dict)


@dataclass
class Report:
    """A report: full text with its headers, the two sections, the 14 labels (NaN = unmentioned),
    and the role of every word (``roles``, :func:`word_roles` of ``tagged``, the text with role tags)."""

    text: str
    findings: str
    impression: str
    labels: dict[str, float]
    tagged: str = ""
    roles: list[WordRole] = field(default_factory=list)


def location(side: str, zone: str, rng: np.random.Generator) -> tuple[str, str]:
    """(preposition, tagged phrase) naming a lung location: a lobe or a zone word."""
    use_lobe = rng.random() < 0.5
    i = rng.random()
    if side == "bilateral":
        if use_lobe:
            return "in the", L(LOBES[(side, zone)])
        opts = BILATERAL_ZONE_PHRASES[zone]
        prep, phrase = opts[min(int(i * len(opts)), len(opts) - 1)]
        return prep, L(phrase)
    if use_lobe:
        return "in the", L(LOBES[(side, zone)])
    prep, phrase = ZONE_PHRASES[zone][min(int(i * len(ZONE_PHRASES[zone])), len(ZONE_PHRASES[zone]) - 1)]
    return prep, L(phrase.format(side=side))


def severity_word(spec: FindingSpec, rng: np.random.Generator) -> str:
    return S(pick(SEVERITY_WORDS[spec.finding][spec.severity], rng))


def _noun(spec: FindingSpec) -> str:
    if spec.finding == "lung_lesion":
        return F("mass" if spec.severity == "severe" else "nodule")
    return F({"pleural_effusion": "pleural effusion", "edema": "pulmonary edema"}.get(spec.finding, spec.finding))


def short_phrase(spec: FindingSpec, rng: np.random.Generator) -> str:
    """A compact noun phrase ("moderate right lower lobe consolidation"), lower case, tagged.

    Used in impressions and as the relation caption; a fixed number of draws whatever the spec.
    """
    f = spec.finding
    sev = severity_word(spec, rng) if f in SEVERITY_WORDS else ""
    prep, loc = location(spec.side, spec.zone, rng) if spec.zone != "none" else ("", "")
    form = rng.random()
    if f == "cardiomegaly":
        return f"{sev} {F('cardiomegaly')}"
    if f == "edema":
        return f"{sev} {F('pulmonary edema')}"
    if f == "pleural_effusion":
        return (
            f"{sev} {L('bilateral')} {F('pleural effusions')}"
            if spec.side == "bilateral"
            else f"{sev} {L(spec.side)} {F('pleural effusion')}"
        )
    if f == "pneumothorax":
        return f"{sev} {L(spec.side)} {F('pneumothorax')}"
    if f == "support_devices":
        return uncap(device_sentence(spec, rng))
    if f == "lung_lesion" or form < 0.5:
        return f"{sev} {_noun(spec)} {prep} {loc}"
    return f"{sev} {loc} {_noun(spec)}"


def device_sentence(spec: FindingSpec, rng: np.random.Generator) -> str:
    phrases = DEVICE_KINDS[spec.device]["phrases"]
    text = pick(phrases, rng).replace("{side}-sided", "{side_sided}")
    side = spec.side
    text = text.format(side=L(side), Side=L(cap(side)), side_sided=L(f"{side}-sided"))
    return mark(text, ("finding", "anatomy"))


def positive_sentence(spec: FindingSpec, rng: np.random.Generator) -> Sentence:
    """A plain (certain) statement of ``spec`` in one of several phrasings."""
    f = spec.finding
    label = {CHEXPERT_LABEL[f]: 1.0}
    if f == "support_devices":
        return Sentence(device_sentence(spec, rng) + ".", label)
    sev = severity_word(spec, rng)
    if f == "cardiomegaly":
        adv = S(pick(SEVERITY_ADVERBS[spec.severity], rng))
        opts = [
            f"{cap(sev)} {F('cardiomegaly')}.",
            f"The {A('heart')} is {adv} {F('enlarged')}.",
            f"The {A('cardiac silhouette')} is {adv} {F('enlarged')}.",
            f"There is {sev} {F('enlargement')} of the {A('cardiac silhouette')}.",
        ]
        return Sentence(pick(opts, rng), label)
    if f == "edema":
        opts = [
            f"{cap(sev)} {F('pulmonary edema')}.",
            f"There is {sev} {F('interstitial pulmonary edema')}.",
            f"Findings are consistent with {sev} {F('pulmonary edema')}.",
            f"{cap(sev)} {L('bilateral perihilar')} {F('haziness')} consistent with {F('pulmonary edema')}.",
        ]
        return Sentence(pick(opts, rng), label)
    if f == "pleural_effusion":
        if spec.side == "bilateral":
            opts = [
                f"{cap(sev)} {L('bilateral')} {F('pleural effusions')}.",
                f"There are {sev} {L('bilateral')} {F('pleural effusions')}.",
                f"{cap(sev)} {F('pleural effusions')} are present on {L('both sides')}.",
            ]
        else:
            s = spec.side
            opts = [
                f"{cap(sev)} {L(s)} {F('pleural effusion')}.",
                f"There is {article(sev)} {sev} {L(s)} {F('pleural effusion')}.",
                f"{L(cap(s))} {sev} {F('effusion')} {F('blunts')} the {A('costophrenic angle')}.",
                f"{cap(article(sev))} {sev} {L(s + '-sided')} {F('pleural effusion')} is present.",
            ]
        return Sentence(pick(opts, rng), label)
    if f == "pneumothorax":
        s = spec.side
        opts = [
            f"{cap(sev)} {L(s)} {F('pneumothorax')}.",
            f"There is {article(sev)} {sev} {L(s + '-sided')} {F('pneumothorax')}.",
            f"{cap(article(sev))} {sev} {L(s)} {F('pneumothorax')} is present, with a visible {A('pleural edge')}.",
            f"{cap(sev)} {L(s)} {L('apical')} and {L('lateral')} {F('pneumothorax')}.",
        ]
        return Sentence(pick(opts, rng), label)
    prep, loc = location(spec.side, spec.zone, rng)
    noun = _noun(spec)
    if f == "lung_lesion":
        opts = [
            f"{cap(article(sev))} {sev} {noun} is seen {prep} {loc}.",
            f"There is {article(sev)} {sev} {noun} {prep} {loc}.",
            f"{cap(sev)} {F('pulmonary')} {noun} {prep} {loc}.",
            f"{cap(loc)} {sev} {noun}.",
        ]
    elif f == "consolidation":
        opts = [
            f"{cap(sev)} {F('consolidation')} {prep} {loc}.",
            f"There is {sev} {F('airspace consolidation')} {prep} {loc}.",
            f"{cap(loc)} {F('consolidation')}, {sev} in extent.",
            f"{cap(sev)} {F('consolidative opacity')} {prep} {loc}.",
        ]
    elif f == "pneumonia":
        opts = [
            f"{cap(sev)} {loc} {F('pneumonia')}.",
            f"{F('Patchy opacities')} {prep} {loc} consistent with {sev} {F('pneumonia')}.",
            f"{F('Airspace opacity')} {prep} {loc} compatible with {sev} {F('pneumonia')}.",
            f"Findings {prep} {loc} are compatible with {sev} {F('pneumonia')}.",
        ]
    else:  # atelectasis
        opts = [
            f"{cap(sev)} {F('atelectasis')} {prep} {loc}.",
            f"There is {sev} {F('atelectasis')} {prep} {loc}.",
            f"{cap(sev)} {loc} {F('atelectasis')}.",
            f"{cap(sev)} {F('atelectatic change')} {prep} {loc}.",
        ]
    return Sentence(pick(opts, rng), label)


def hedged_sentence(spec: FindingSpec, rng: np.random.Generator) -> Sentence:
    """A hedged statement of ``spec`` (label -1.0)."""
    f = spec.finding
    label = {CHEXPERT_LABEL[f]: -1.0}
    sev = severity_word(spec, rng)
    if f == "cardiomegaly":
        adv = S(pick(SEVERITY_ADVERBS[spec.severity], rng))
        opts = [
            f"The {A('heart')} is {C('possibly')} {adv} {F('enlarged')}.",
            f"{C('Possible')} {sev} {F('cardiomegaly')}.",
        ]
    elif f == "edema":
        opts = [
            f"{C('Possible')} {sev} {F('pulmonary edema')}.",
            f"{F('Hazy')} {L('perihilar')} {F('opacities')} {C('may reflect')} {sev} {F('pulmonary edema')}.",
        ]
    elif f == "pleural_effusion":
        side = L("bilateral" if spec.side == "bilateral" else spec.side)
        opts = [
            f"{C('Possible')} {sev} {side} {F('pleural effusion')}.",
            f"{F('Blunting')} of the {A('costophrenic angle')} {C('may reflect')} {article(sev)} {sev} {side} "
            f"{F('effusion')}.",
        ]
    elif f == "pneumothorax":
        opts = [
            f"{C('Questionable')} {sev} {L(spec.side)} {L('apical')} {F('pneumothorax')}.",
            f"{cap(article(sev))} {sev} {L(spec.side)} {F('pneumothorax')} {C('cannot be excluded')}.",
        ]
    else:
        prep, loc = location(spec.side, spec.zone, rng)
        noun = _noun(spec)
        if f == "lung_lesion":
            opts = [
                f"{C('Possible')} {sev} {noun} {prep} {loc}.",
                f"{C('Questionable')} {F('nodular opacity')} {prep} {loc}.",
            ]
        else:
            opts = [
                f"{cap(sev)} {F('opacity')} {prep} {loc} {C('may represent')} {noun}.",
                f"{cap(noun)} {prep} {loc} {C('cannot be excluded')}.",
                f"{F('Opacity')} {prep} {loc} {C('could reflect')} {noun}.",
            ]
    return Sentence(pick(opts, rng), label)


def negation_sentences(absent: list[str], rng: np.random.Generator) -> list[Sentence]:
    """Sentences that negate the (absent) finding keys in ``absent``, one to three per sentence."""
    out: list[Sentence] = []
    todo = list(absent)
    while todo:
        k = min(len(todo), 1 + int(rng.random() * 3))
        group, todo = todo[:k], todo[k:]
        nouns = [F(pick(NEGATED_NOUNS[g], rng)) for g in group]
        labels = {CHEXPERT_LABEL[g]: 0.0 for g in group}
        if len(nouns) == 1:
            listed = nouns[0]
        elif len(nouns) == 2:
            listed = f"{nouns[0]} or {nouns[1]}"
        else:
            listed = ", ".join(nouns[:-1]) + f", or {nouns[-1]}"
        form = rng.random()
        if form < 0.4:
            text = f"{C('No')} {listed}."
        elif form < 0.65:
            text = f"There is {C('no')} {listed}."
        elif form < 0.85:
            text = f"{C('No evidence of')} {listed}."
        else:
            verb = "is" if len(nouns) == 1 else "are"
            text = f"{cap(listed)} {C(verb + ' not seen')}."
        out.append(Sentence(text, labels))
    return out


def combine_labels(sentences: list[Sentence]) -> dict[str, float]:
    """The 14 labels implied by ``sentences`` (see the module docstring for the rules)."""
    labels: dict[str, float] = {name: math.nan for name in CHEXPERT_LABELS}

    def merge(name: str, value: float) -> None:
        old = labels[name]
        if math.isnan(old) or PRIORITY[value] > PRIORITY[old]:
            labels[name] = value

    for sentence in sentences:
        for name, value in sentence.labels.items():
            merge(name, value)
    for parent, children in PARENT_LABELS.items():
        for child in children:
            if not math.isnan(labels[child]):
                merge(parent, labels[child])
    abnormal = any(
        labels[name] in (1.0, -1.0) for name in CHEXPERT_LABELS if name not in ("No Finding", "Support Devices")
    )
    labels["No Finding"] = math.nan if abnormal else 1.0
    return labels


def compose_report(
    specs: list[FindingSpec], view: str, low_volumes: bool, prior: bool, rng: np.random.Generator
) -> Report:
    """The report of a study showing ``specs`` (the only findings it names as present or hedged)."""
    present = {s.finding for s in specs}
    lung_findings = [s for s in specs if s.finding not in ("cardiomegaly", "support_devices")]
    devices = [s for s in specs if s.finding == "support_devices"]
    heart = [s for s in specs if s.finding == "cardiomegaly"]

    index = {id(s): k for k, s in enumerate(specs)}  # position in the study's annotations

    def linked(s: FindingSpec, sentence: Sentence) -> Sentence:
        return Sentence(link(sentence.text, index[id(s)]), sentence.labels)

    def state(s: FindingSpec) -> Sentence:
        return linked(s, hedged_sentence(s, rng) if s.certainty == "uncertain" else positive_sentence(s, rng))

    body: list[Sentence] = []
    if heart:
        body.append(state(heart[0]))
    elif rng.random() < 0.6:
        text, labels = pick(NORMAL_STATEMENTS["heart"], rng)
        body.append(Sentence(mark(text), {k: 0.0 for k in labels}))
    lung_sentences = [state(s) for s in lung_findings]
    order = rng.permutation(len(lung_sentences)) if rng.random() < 0.3 else range(len(lung_sentences))
    body += [lung_sentences[i] for i in order]

    any_opacity = bool(present & set(OPACITY_FINDINGS))
    if not lung_findings and rng.random() < 0.5:
        text, labels = pick(NORMAL_STATEMENTS["lungs"], rng)
        body.append(Sentence(mark(text), {k: 0.0 for k in labels}))
    weights = {
        "pneumothorax": 0.7,
        "pleural_effusion": 0.7,
        "consolidation": 0.55,
        "edema": 0.35,
        "pneumonia": 0.15,
        "atelectasis": 0.1,
        "lung_lesion": 0.08,
    }
    absent = [f for f, p in weights.items() if f not in present and rng.random() < p]
    if any_opacity:  # do not deny an infection the image may show
        absent = [f for f in absent if f not in ("pneumonia", "consolidation")]
    body += negation_sentences(absent, rng)

    findings: list[Sentence] = []
    if rng.random() < 0.35:
        findings.append(Sentence(mark(pick(FILLER_SENTENCES[view], rng), ("anatomy",))))
    if prior and rng.random() < 0.7:
        findings.append(Sentence(mark(pick(FILLER_SENTENCES["comparison"], rng), ("anatomy",))))
    findings += [linked(d, positive_sentence(d, rng)) for d in devices]
    findings += body
    if low_volumes and rng.random() < 0.7:
        findings.insert(min(1, len(findings)), Sentence(mark(pick(FILLER_SENTENCES["low_volumes"], rng), ("anatomy",))))
    if rng.random() < 0.3:
        findings.append(Sentence(mark(pick(FILLER_SENTENCES["any"], rng), ("anatomy",))))
    if rng.random() < 0.35:
        text, labels = pick(NORMAL_STATEMENTS["bones"], rng)
        findings.append(Sentence(mark(text), {k: 0.0 for k in labels}))

    impression: list[Sentence] = []
    abnormal = [s for s in specs if s.finding != "support_devices"]
    if not abnormal:
        impression.append(Sentence(mark(pick(NORMAL_IMPRESSIONS, rng))))
    else:
        for s in abnormal:
            phrase = link(short_phrase(s, rng), index[id(s)])
            if s.certainty == "uncertain":
                text = pick(
                    [
                        f"{link(C('Possible'), index[id(s)])} {phrase}.",
                        f"{cap(phrase)} {link(C('cannot be excluded'), index[id(s)])}.",
                        f"Findings {link(C('may represent'), index[id(s)])} {phrase}.",
                    ],
                    rng,
                )
                impression.append(Sentence(text, {CHEXPERT_LABEL[s.finding]: -1.0}))
            else:
                impression.append(Sentence(cap(phrase) + ".", {CHEXPERT_LABEL[s.finding]: 1.0}))
        if "pneumothorax" in absent and rng.random() < 0.3:
            impression.append(Sentence(f"{C('No')} {F('pneumothorax')}.", {"Pneumothorax": 0.0}))
    if len(impression) > 1 and rng.random() < 0.3:
        imp_text = " ".join(f"{tag('number', str(i + 1))}. {s.text}" for i, s in enumerate(impression))
    else:
        imp_text = " ".join(s.text for s in impression)
    find_text = " ".join(s.text for s in findings)

    parts = []
    if rng.random() < 0.5:
        parts.append(H("EXAMINATION: CHEST (PA AND LAT)" if view == "PA" else "EXAMINATION: CHEST (PORTABLE AP)"))
    if rng.random() < 0.4:
        parts.append(H("INDICATION:") + " " + mark(pick(INDICATIONS, rng), ("anatomy",)))
    if prior or rng.random() < 0.3:
        parts.append(H("COMPARISON:") + " " + ("___." if prior else "None."))
    parts.append(H("FINDINGS:") + " " + find_text)
    parts.append(H("IMPRESSION:") + " " + imp_text)
    tagged = "\n\n".join(parts)
    return Report(
        text=plain(tagged),
        findings=plain(find_text),
        impression=plain(imp_text),
        labels=combine_labels(findings + impression),
        tagged=tagged,
        roles=word_roles(tagged),
    )


def caption(spec: FindingSpec, seed: int) -> str:
    """A one-sentence caption of one finding (``seed`` fixes the phrasing; foils use the same seed)."""
    return plain(cap(short_phrase(spec, np.random.default_rng(seed)))) + "."


def foil_specs(spec: FindingSpec) -> dict[str, FindingSpec | None]:
    """Specs that differ from ``spec`` in exactly one attribute (``None`` where it has no such attribute)."""
    flip_side = {"left": "right", "right": "left"}
    other_zone = {"upper": "lower", "lower": "upper", "middle": "lower"}
    other_sev = {"mild": "severe", "severe": "mild", "moderate": "severe"}
    return {
        "side": replace(spec, side=flip_side[spec.side]) if spec.side in flip_side else None,
        "zone": replace(spec, zone=other_zone[spec.zone]) if spec.zone in other_zone else None,
        "severity": replace(spec, severity=other_sev[spec.severity]) if spec.severity in other_sev else None,
        "negation": spec,
    }


def relation_candidates(spec: FindingSpec, seed: int) -> list[tuple[str, bool, str]]:
    """``(text, is_correct, contrast)`` rows: the true caption (contrast "none") and one foil per contrast."""
    rows = [(caption(spec, seed), True, "none")]
    for contrast, foil in foil_specs(spec).items():
        if foil is None:
            continue
        if contrast == "negation":
            rows.append(
                (f"No {FOIL_NEGATIONS[spec.finding]}.", False, contrast)
            )
        else:
            text = caption(foil, seed)
            if text != rows[0][0]:
                rows.append((text, False, contrast))
    return rows


# --------------------------------------------------------------------------------------------- binding captions
# A binding caption names two or three findings, one sentence each. Its foils keep every word and
# move one attribute *between* findings (``swap_side``, ``swap_zone``), so a bag of words cannot
# tell them apart; only which location word goes with which finding word differs.

#: Zone phrases of binding captions: ``(preposition, phrase with {side})``. No phrase depends on the
#: side (no "lingula", no "right middle lobe"), so a side can move between findings without changing
#: any other word, and a zone phrase moves with its zone (preposition included).
BINDING_ZONE_PHRASES: dict[str, list[tuple[str, str]]] = {
    "upper": [("in the", "{side} upper lobe"), ("in the", "{side} upper lung"), ("at the", "{side} lung apex"),
              ("in the", "{side} upper zone")],
    "middle": [("in the", "{side} mid lung"), ("in the", "{side} midlung zone"), ("in the", "{side} perihilar region")],
    "lower": [("in the", "{side} lower lobe"), ("at the", "{side} lung base"), ("at the", "{side} base"),
              ("in the", "{side} lower lung")],
}
#: Foils of binding studies: sides exchanged between two findings, zones exchanged between two
#: findings (same bag of words as the true caption), and every side flipped (``flip_sides``).
BINDING_CONTRASTS: tuple[str, ...] = ("swap_side", "swap_zone", "flip_sides")


@dataclass(frozen=True)
class BindingSlot:
    """The fixed phrasing of one finding of a binding caption (tagged words, drawn once per caption)."""

    severity: str
    noun: str
    form: float
    zone_phrase: dict[str, tuple[str, str]]  # zone -> (preposition, phrase with {side})


def binding_slots(specs: list[FindingSpec] | tuple[FindingSpec, ...], seed: int) -> list[BindingSlot]:
    """One :class:`BindingSlot` per finding, from ``seed`` (a fixed number of draws per finding).

    A zone phrase is drawn for every zone, so a finding that receives another finding's zone (a
    ``swap_zone`` foil) uses the phrase that finding used: the foil's words are the caption's words.
    """
    rng = np.random.default_rng([seed, 5])
    out = []
    for spec in specs:
        sev = severity_word(spec, rng)
        u = rng.random()
        phrases = {z: opts[min(int(u * len(opts)), len(opts) - 1)] for z, opts in BINDING_ZONE_PHRASES.items()}
        out.append(BindingSlot(sev, _noun(spec), float(rng.random()), phrases))
    return out


def _binding_phrase(spec: FindingSpec, slot: BindingSlot, zone_phrase: tuple[str, str] | None) -> str:
    """One finding's phrase; every word but the side and zone words is the slot's (the form too), and the
    preposition travels with the zone phrase, so moving a side or a zone keeps the bag of words."""
    f, sev, noun = spec.finding, slot.severity, slot.noun
    if f in ("pleural_effusion", "pneumothorax"):
        phrase = f"{sev} {L(spec.side)} {noun}"
    else:
        if zone_phrase is None:
            raise ValueError(f"{f}: a binding caption needs a zone for a zoned finding")
        prep, loc = zone_phrase
        phrase = f"{sev} {noun} {prep} {L(loc.format(side=spec.side))}"
    return phrase if slot.form < 0.5 else f"there is {article(sev)} {phrase}"


def _binding_text(specs, slots, zone_phrases, tagged: bool) -> str:
    sentences = [cap(link(_binding_phrase(s, slot, zp), k)) + "."
                 for k, (s, slot, zp) in enumerate(zip(specs, slots, zone_phrases, strict=True))]
    text = " ".join(sentences)
    return text if tagged else plain(text)


def binding_caption(specs: list[FindingSpec] | tuple[FindingSpec, ...], seed: int, tagged: bool = False) -> str:
    """The caption of a binding study: one short sentence per finding, in annotation order
    ("Moderate consolidation in the right upper lobe. Small left pleural effusion."); ``tagged``:
    with role tags linked to each finding's index (:func:`word_roles`)."""
    slots = binding_slots(specs, seed)
    zps = [slot.zone_phrase.get(s.zone) for s, slot in zip(specs, slots, strict=True)]
    return _binding_text(specs, slots, zps, tagged)


def _swap_pairs(specs, attr: str) -> list[tuple[int, int]]:
    pairs = []
    for i in range(len(specs)):
        for j in range(i + 1, len(specs)):
            a, b = getattr(specs[i], attr), getattr(specs[j], attr)
            if attr == "zone" and "none" in (a, b):
                continue
            if a != b:
                pairs.append((i, j))
    return pairs


def binding_candidates(specs: list[FindingSpec] | tuple[FindingSpec, ...], seed: int) -> list[tuple[str, bool, str]]:
    """``(text, is_correct, contrast)`` rows of a binding study: the true caption (contrast "none"),
    ``swap_side`` (the sides of two findings exchanged; when some two sides differ), ``swap_zone``
    (the zones, with their phrases, of two zoned findings exchanged; when some two zones differ) and
    ``flip_sides`` (every side flipped). Swap foils have exactly the caption's words. With three
    findings the swapped pair is drawn (seeded) among the pairs that qualify."""
    specs = list(specs)
    slots = binding_slots(specs, seed)
    zps = [slot.zone_phrase.get(s.zone) for s, slot in zip(specs, slots, strict=True)]
    true = _binding_text(specs, slots, zps, tagged=False)
    rows = [(true, True, "none")]
    rng = np.random.default_rng([seed, 6])
    for contrast, attr in (("swap_side", "side"), ("swap_zone", "zone")):
        pairs = _swap_pairs(specs, attr)
        u = rng.random()  # always drawn: the other contrast's pair does not depend on this one's
        if not pairs:
            continue
        i, j = pairs[min(int(u * len(pairs)), len(pairs) - 1)]
        foil = list(specs)
        foil_zps = list(zps)
        if attr == "side":
            foil[i], foil[j] = replace(specs[i], side=specs[j].side), replace(specs[j], side=specs[i].side)
        else:
            foil[i], foil[j] = replace(specs[i], zone=specs[j].zone), replace(specs[j], zone=specs[i].zone)
            foil_zps[i], foil_zps[j] = zps[j], zps[i]
        text = _binding_text(foil, slots, foil_zps, tagged=False)
        if text != true:
            rows.append((text, False, contrast))
    flip = {"left": "right", "right": "left"}
    flipped = [replace(s, side=flip.get(s.side, s.side)) for s in specs]
    text = _binding_text(flipped, slots, zps, tagged=False)
    if text != true:
        rows.append((text, False, "flip_sides"))
    return rows


def caption_tagged(spec: FindingSpec, seed: int) -> str:
    """:func:`caption` with role tags linked to finding 0 (``plain`` of it is the caption)."""
    return cap(link(short_phrase(spec, np.random.default_rng(seed)), 0)) + "."
