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
from dataclasses import dataclass, field, replace

import numpy as np

from reclf.data.studies import CHEXPERT_LABELS
from reclf.data.synthetic.findings import FindingSpec
from reclf.data.synthetic.vocab import (
    BILATERAL_ZONE_PHRASES,
    CHEXPERT_LABEL,
    DEVICE_KINDS,
    FILLER_SENTENCES,
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


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeio" or word.startswith(("8 ", "11 ", "18 ")) else "a"


@dataclass
class Sentence:
    """A sentence and the labels it states (label -> 1 / 0 / -1)."""

    text: str
    labels: dict[str, float] = field(default_factory=dict)


@dataclass
class Report:
    """A report: full text with its headers, the two sections, and the 14 labels (NaN = unmentioned)."""

    text: str
    findings: str
    impression: str
    labels: dict[str, float]


def location(side: str, zone: str, rng: np.random.Generator) -> tuple[str, str]:
    """(preposition, phrase) naming a lung location: a lobe or a zone word."""
    use_lobe = rng.random() < 0.5
    i = rng.random()
    if side == "bilateral":
        opts = BILATERAL_ZONE_PHRASES[zone]
        return opts[min(int(i * len(opts)), len(opts) - 1)] if not use_lobe else ("in the", LOBES[(side, zone)])
    if use_lobe:
        return "in the", LOBES[(side, zone)]
    prep, phrase = ZONE_PHRASES[zone][min(int(i * len(ZONE_PHRASES[zone])), len(ZONE_PHRASES[zone]) - 1)]
    return prep, phrase.format(side=side)


def severity_word(spec: FindingSpec, rng: np.random.Generator) -> str:
    return pick(SEVERITY_WORDS[spec.finding][spec.severity], rng)


def _noun(spec: FindingSpec) -> str:
    if spec.finding == "lung_lesion":
        return "mass" if spec.severity == "severe" else "nodule"
    return {"pleural_effusion": "pleural effusion", "edema": "pulmonary edema"}.get(spec.finding, spec.finding)


def short_phrase(spec: FindingSpec, rng: np.random.Generator) -> str:
    """A compact noun phrase ("moderate right lower lobe consolidation"), lower case.

    Used in impressions and as the relation caption; a fixed number of draws whatever the spec.
    """
    f = spec.finding
    sev = severity_word(spec, rng) if f in SEVERITY_WORDS else ""
    prep, loc = location(spec.side, spec.zone, rng) if spec.zone != "none" else ("", "")
    form = rng.random()
    if f == "cardiomegaly":
        return f"{sev} cardiomegaly"
    if f == "edema":
        return f"{sev} pulmonary edema"
    if f == "pleural_effusion":
        return (
            f"{sev} bilateral pleural effusions" if spec.side == "bilateral" else f"{sev} {spec.side} pleural effusion"
        )
    if f == "pneumothorax":
        return f"{sev} {spec.side} pneumothorax"
    if f == "support_devices":
        text = device_sentence(spec, rng)
        return text[:1].lower() + text[1:]
    if f == "lung_lesion" or form < 0.5:
        return f"{sev} {_noun(spec)} {prep} {loc}"
    return f"{sev} {loc} {_noun(spec)}"


def device_sentence(spec: FindingSpec, rng: np.random.Generator) -> str:
    phrases = DEVICE_KINDS[spec.device]["phrases"]
    text = pick(phrases, rng)
    return text.format(side=spec.side, Side=cap(spec.side))


def positive_sentence(spec: FindingSpec, rng: np.random.Generator) -> Sentence:
    """A plain (certain) statement of ``spec`` in one of several phrasings."""
    f = spec.finding
    label = {CHEXPERT_LABEL[f]: 1.0}
    if f == "support_devices":
        return Sentence(device_sentence(spec, rng) + ".", label)
    sev = severity_word(spec, rng)
    if f == "cardiomegaly":
        adv = pick(SEVERITY_ADVERBS[spec.severity], rng)
        opts = [
            f"{cap(sev)} cardiomegaly.",
            f"The heart is {adv} enlarged.",
            f"The cardiac silhouette is {adv} enlarged.",
            f"There is {sev} enlargement of the cardiac silhouette.",
        ]
        return Sentence(pick(opts, rng), label)
    if f == "edema":
        opts = [
            f"{cap(sev)} pulmonary edema.",
            f"There is {sev} interstitial pulmonary edema.",
            f"Findings are consistent with {sev} pulmonary edema.",
            f"{cap(sev)} bilateral perihilar haziness consistent with pulmonary edema.",
        ]
        return Sentence(pick(opts, rng), label)
    if f == "pleural_effusion":
        if spec.side == "bilateral":
            opts = [
                f"{cap(sev)} bilateral pleural effusions.",
                f"There are {sev} bilateral pleural effusions.",
                f"{cap(sev)} pleural effusions are present on both sides.",
            ]
        else:
            s = spec.side
            opts = [
                f"{cap(sev)} {s} pleural effusion.",
                f"There is {article(sev)} {sev} {s} pleural effusion.",
                f"{cap(s)} {sev} effusion blunts the costophrenic angle.",
                f"{cap(article(sev))} {sev} {s}-sided pleural effusion is present.",
            ]
        return Sentence(pick(opts, rng), label)
    if f == "pneumothorax":
        s = spec.side
        opts = [
            f"{cap(sev)} {s} pneumothorax.",
            f"There is {article(sev)} {sev} {s}-sided pneumothorax.",
            f"{cap(article(sev))} {sev} {s} pneumothorax is present, with a visible pleural edge.",
            f"{cap(sev)} {s} apical and lateral pneumothorax.",
        ]
        return Sentence(pick(opts, rng), label)
    prep, loc = location(spec.side, spec.zone, rng)
    noun = _noun(spec)
    if f == "lung_lesion":
        opts = [
            f"{cap(article(sev))} {sev} {noun} is seen {prep} {loc}.",
            f"There is {article(sev)} {sev} {noun} {prep} {loc}.",
            f"{cap(sev)} pulmonary {noun} {prep} {loc}.",
            f"{cap(loc)} {sev} {noun}.",
        ]
    elif f == "consolidation":
        opts = [
            f"{cap(sev)} consolidation {prep} {loc}.",
            f"There is {sev} airspace consolidation {prep} {loc}.",
            f"{cap(loc)} consolidation, {sev} in extent.",
            f"{cap(sev)} consolidative opacity {prep} {loc}.",
        ]
    elif f == "pneumonia":
        opts = [
            f"{cap(sev)} {loc} pneumonia.",
            f"Patchy opacities {prep} {loc} consistent with {sev} pneumonia.",
            f"Airspace opacity {prep} {loc} compatible with {sev} pneumonia.",
            f"Findings {prep} {loc} are compatible with {sev} pneumonia.",
        ]
    else:  # atelectasis
        opts = [
            f"{cap(sev)} atelectasis {prep} {loc}.",
            f"There is {sev} atelectasis {prep} {loc}.",
            f"{cap(sev)} {loc} atelectasis.",
            f"{cap(sev)} atelectatic change {prep} {loc}.",
        ]
    return Sentence(pick(opts, rng), label)


def hedged_sentence(spec: FindingSpec, rng: np.random.Generator) -> Sentence:
    """A hedged statement of ``spec`` (label -1.0)."""
    f = spec.finding
    label = {CHEXPERT_LABEL[f]: -1.0}
    sev = severity_word(spec, rng)
    if f == "cardiomegaly":
        adv = pick(SEVERITY_ADVERBS[spec.severity], rng)
        opts = [f"The heart is possibly {adv} enlarged.", f"Possible {sev} cardiomegaly."]
    elif f == "edema":
        opts = [f"Possible {sev} pulmonary edema.", f"Hazy perihilar opacities may reflect {sev} pulmonary edema."]
    elif f == "pleural_effusion":
        side = "bilateral" if spec.side == "bilateral" else spec.side
        opts = [
            f"Possible {sev} {side} pleural effusion.",
            f"Blunting of the costophrenic angle may reflect {article(sev)} {sev} {side} effusion.",
        ]
    elif f == "pneumothorax":
        opts = [
            f"Questionable {sev} {spec.side} apical pneumothorax.",
            f"{cap(article(sev))} {sev} {spec.side} pneumothorax cannot be excluded.",
        ]
    else:
        prep, loc = location(spec.side, spec.zone, rng)
        noun = _noun(spec)
        if f == "lung_lesion":
            opts = [f"Possible {sev} {noun} {prep} {loc}.", f"Questionable nodular opacity {prep} {loc}."]
        else:
            opts = [
                f"{cap(sev)} opacity {prep} {loc} may represent {noun}.",
                f"{cap(noun)} {prep} {loc} cannot be excluded.",
                f"Opacity {prep} {loc} could reflect {noun}.",
            ]
    return Sentence(pick(opts, rng), label)


def negation_sentences(absent: list[str], rng: np.random.Generator) -> list[Sentence]:
    """Sentences that negate the (absent) finding keys in ``absent``, one to three per sentence."""
    out: list[Sentence] = []
    todo = list(absent)
    while todo:
        k = min(len(todo), 1 + int(rng.random() * 3))
        group, todo = todo[:k], todo[k:]
        nouns = [pick(NEGATED_NOUNS[g], rng) for g in group]
        labels = {CHEXPERT_LABEL[g]: 0.0 for g in group}
        if len(nouns) == 1:
            listed = nouns[0]
        elif len(nouns) == 2:
            listed = f"{nouns[0]} or {nouns[1]}"
        else:
            listed = ", ".join(nouns[:-1]) + f", or {nouns[-1]}"
        form = rng.random()
        if form < 0.4:
            text = f"No {listed}."
        elif form < 0.65:
            text = f"There is no {listed}."
        elif form < 0.85:
            text = f"No evidence of {listed}."
        else:
            verb = "is" if len(nouns) == 1 else "are"
            text = f"{cap(listed)} {verb} not seen."
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

    def state(s: FindingSpec) -> Sentence:
        return hedged_sentence(s, rng) if s.certainty == "uncertain" else positive_sentence(s, rng)

    body: list[Sentence] = []
    if heart:
        body.append(state(heart[0]))
    elif rng.random() < 0.6:
        text, labels = pick(NORMAL_STATEMENTS["heart"], rng)
        body.append(Sentence(text, {k: 0.0 for k in labels}))
    lung_sentences = [state(s) for s in lung_findings]
    order = rng.permutation(len(lung_sentences)) if rng.random() < 0.3 else range(len(lung_sentences))
    body += [lung_sentences[i] for i in order]

    any_opacity = bool(present & set(OPACITY_FINDINGS))
    if not lung_findings and rng.random() < 0.5:
        text, labels = pick(NORMAL_STATEMENTS["lungs"], rng)
        body.append(Sentence(text, {k: 0.0 for k in labels}))
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
        findings.append(Sentence(pick(FILLER_SENTENCES[view], rng)))
    if prior and rng.random() < 0.7:
        findings.append(Sentence(pick(FILLER_SENTENCES["comparison"], rng)))
    findings += [positive_sentence(d, rng) for d in devices]
    findings += body
    if low_volumes and rng.random() < 0.7:
        findings.insert(min(1, len(findings)), Sentence(pick(FILLER_SENTENCES["low_volumes"], rng)))
    if rng.random() < 0.3:
        findings.append(Sentence(pick(FILLER_SENTENCES["any"], rng)))
    if rng.random() < 0.35:
        text, labels = pick(NORMAL_STATEMENTS["bones"], rng)
        findings.append(Sentence(text, {k: 0.0 for k in labels}))

    impression: list[Sentence] = []
    abnormal = [s for s in specs if s.finding != "support_devices"]
    if not abnormal:
        impression.append(Sentence(pick(NORMAL_IMPRESSIONS, rng)))
    else:
        for s in abnormal:
            phrase = short_phrase(s, rng)
            if s.certainty == "uncertain":
                text = pick(
                    [f"Possible {phrase}.", f"{cap(phrase)} cannot be excluded.", f"Findings may represent {phrase}."],
                    rng,
                )
                impression.append(Sentence(text, {CHEXPERT_LABEL[s.finding]: -1.0}))
            else:
                impression.append(Sentence(cap(phrase) + ".", {CHEXPERT_LABEL[s.finding]: 1.0}))
        if "pneumothorax" in absent and rng.random() < 0.3:
            impression.append(Sentence("No pneumothorax.", {"Pneumothorax": 0.0}))
    if len(impression) > 1 and rng.random() < 0.3:
        imp_text = " ".join(f"{i + 1}. {s.text}" for i, s in enumerate(impression))
    else:
        imp_text = " ".join(s.text for s in impression)
    find_text = " ".join(s.text for s in findings)

    parts = []
    if rng.random() < 0.5:
        parts.append("EXAMINATION: CHEST (PA AND LAT)" if view == "PA" else "EXAMINATION: CHEST (PORTABLE AP)")
    if rng.random() < 0.4:
        parts.append("INDICATION: " + pick(INDICATIONS, rng))
    if prior or rng.random() < 0.3:
        parts.append("COMPARISON: " + ("___." if prior else "None."))
    parts.append("FINDINGS: " + find_text)
    parts.append("IMPRESSION: " + imp_text)
    return Report(
        text="\n\n".join(parts),
        findings=find_text,
        impression=imp_text,
        labels=combine_labels(findings + impression),
    )


def caption(spec: FindingSpec, seed: int) -> str:
    """A one-sentence caption of one finding (``seed`` fixes the phrasing; foils use the same seed)."""
    return cap(short_phrase(spec, np.random.default_rng(seed))) + "."


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
