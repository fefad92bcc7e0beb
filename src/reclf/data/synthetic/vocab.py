"""SynthCXR vocabulary: the ONE source of finding names, labels, synonyms, locations and cue phrases.

Everything that writes or reads SynthCXR text draws on these constants: the report writer
(``report_text``), the label rules, the tests, and other parts of reclf (zero-shot prompt files,
relation foils). Keep them plain ``dict`` / ``list`` / ``tuple`` data so they can be imported
anywhere (``reclf.data`` is the bottom layer) and dumped to JSON or YAML as they are.

Conventions
-----------
* Sides are the PATIENT's sides. In a PA (and AP) frontal view the patient's left is on the
  IMAGE's RIGHT.
* A finding key is snake_case (``"pleural_effusion"``); its CheXpert label is in
  :data:`CHEXPERT_LABEL`.
* Severities are the canonical scale ``mild < moderate < severe``; each finding words them its
  own way (:data:`SEVERITY_WORDS`, e.g. effusions are "small / moderate / large").
"""

from __future__ import annotations

from typing import Any

#: Finding keys that SynthCXR renders (``"no_finding"`` is a study with none of them).
FINDINGS: tuple[str, ...] = (
    "atelectasis",
    "cardiomegaly",
    "consolidation",
    "edema",
    "pleural_effusion",
    "pneumothorax",
    "pneumonia",
    "lung_lesion",
    "support_devices",
)

#: Finding key -> CheXpert label (the column name in the study table).
CHEXPERT_LABEL: dict[str, str] = {
    "atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "consolidation": "Consolidation",
    "edema": "Edema",
    "pleural_effusion": "Pleural Effusion",
    "pneumothorax": "Pneumothorax",
    "pneumonia": "Pneumonia",
    "lung_lesion": "Lung Lesion",
    "support_devices": "Support Devices",
    "no_finding": "No Finding",
}

#: CheXpert label -> finding key (inverse of :data:`CHEXPERT_LABEL`).
FINDING_OF_LABEL: dict[str, str] = {v: k for k, v in CHEXPERT_LABEL.items()}

#: Parent labels follow their children (priority 1 > -1 > 0 > unmentioned), as in the CheXpert
#: label hierarchy: any parenchymal opacity makes "Lung Opacity" present, cardiomegaly makes
#: "Enlarged Cardiomediastinum" present.
PARENT_LABELS: dict[str, tuple[str, ...]] = {
    "Lung Opacity": ("Atelectasis", "Consolidation", "Edema", "Pneumonia", "Lung Lesion"),
    "Enlarged Cardiomediastinum": ("Cardiomegaly",),
}

#: Findings whose pixels are "opacity" (the segmentation set's opacity target is their union).
OPACITY_FINDINGS: tuple[str, ...] = ("atelectasis", "consolidation", "edema", "pneumonia", "lung_lesion")

#: Canonical side values of an annotation (the PATIENT's side).
SIDES: tuple[str, ...] = ("left", "right", "bilateral", "none")
#: Canonical zone values of an annotation.
ZONES: tuple[str, ...] = ("upper", "middle", "lower", "none")
#: Canonical severity scale (``"none"`` for support devices).
SEVERITIES: tuple[str, ...] = ("mild", "moderate", "severe")

#: Which sides each finding can take (first listed = most common).
FINDING_SIDES: dict[str, tuple[str, ...]] = {
    "atelectasis": ("left", "right", "bilateral"),
    "cardiomegaly": ("none",),
    "consolidation": ("left", "right", "bilateral"),
    "edema": ("bilateral",),
    "pleural_effusion": ("left", "right", "bilateral"),
    "pneumothorax": ("left", "right"),
    "pneumonia": ("left", "right", "bilateral"),
    "lung_lesion": ("left", "right"),
    "support_devices": ("none", "left", "right"),
}

#: Which zones each finding can take (``("none",)``: the finding has no zone).
FINDING_ZONES: dict[str, tuple[str, ...]] = {
    "atelectasis": ("lower", "middle", "upper"),
    "cardiomegaly": ("none",),
    "consolidation": ("upper", "middle", "lower"),
    "edema": ("none",),
    "pleural_effusion": ("none",),
    "pneumothorax": ("none",),
    "pneumonia": ("upper", "middle", "lower"),
    "lung_lesion": ("upper", "middle", "lower"),
    "support_devices": ("none",),
}

#: Findings with a meaningful side/zone: these take part in relation (binding) tests.
RELATIONAL_FINDINGS: tuple[str, ...] = (
    "atelectasis",
    "consolidation",
    "pleural_effusion",
    "pneumothorax",
    "pneumonia",
    "lung_lesion",
)

#: Finding key -> nouns/phrases a report uses for it (first = canonical noun).
FINDING_SYNONYMS: dict[str, list[str]] = {
    "atelectasis": ["atelectasis", "atelectatic change", "volume loss with atelectasis", "collapse"],
    "cardiomegaly": ["cardiomegaly", "enlarged heart", "enlargement of the cardiac silhouette"],
    "consolidation": ["consolidation", "airspace consolidation", "consolidative opacity"],
    "edema": ["pulmonary edema", "interstitial edema", "edema"],
    "pleural_effusion": ["pleural effusion", "effusion", "pleural fluid"],
    "pneumothorax": ["pneumothorax", "pneumothoraces"],
    "pneumonia": ["pneumonia", "infectious process", "infection"],
    "lung_lesion": ["nodule", "pulmonary nodule", "mass", "nodular opacity"],
    "support_devices": ["endotracheal tube", "central venous catheter", "picc", "nasogastric tube"],
}

#: Support device kinds -> (side it may take, report phrases). Sides are the patient's.
DEVICE_KINDS: dict[str, dict[str, Any]] = {
    "endotracheal_tube": {
        "sides": ("none",),
        "phrases": [
            "An endotracheal tube is in place with its tip about 4 cm above the carina",
            "Endotracheal tube terminates in standard position above the carina",
            "The endotracheal tube is appropriately positioned",
        ],
    },
    "central_line": {
        "sides": ("right", "left"),
        "phrases": [
            "A {side} internal jugular central venous catheter terminates in the SVC",
            "{Side} internal jugular central venous catheter with tip in the mid SVC",
            "A {side}-sided central venous catheter is present, tip at the cavoatrial junction",
        ],
    },
    "picc": {
        "sides": ("right", "left"),
        "phrases": [
            "A {side} PICC terminates in the lower SVC",
            "{Side} upper extremity PICC with tip in the SVC",
        ],
    },
    "nasogastric_tube": {
        "sides": ("none",),
        "phrases": [
            "A nasogastric tube courses below the diaphragm and out of view",
            "Enteric tube passes below the diaphragm with the tip in the stomach",
        ],
    },
}

#: Text terms that MENTION each CheXpert label (lower case, matched on word boundaries). Parent
#: labels include their children's terms. Used by the label rules and the tests that check
#: labels against the report text.
LABEL_TERMS: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("atelectasis", "atelectatic", "collapse"),
    "Cardiomegaly": ("cardiomegaly", "heart", "cardiac silhouette"),
    "Consolidation": ("consolidation", "consolidative"),
    "Edema": ("edema",),
    "Pleural Effusion": ("effusion", "effusions", "pleural fluid"),
    "Pneumothorax": ("pneumothorax", "pneumothoraces"),
    "Pneumonia": ("pneumonia", "infection", "infectious"),
    "Lung Lesion": ("nodule", "nodular", "mass"),
    "Support Devices": ("endotracheal tube", "catheter", "picc", "nasogastric tube", "enteric tube"),
    "Fracture": ("fracture", "fractures"),
    "Lung Opacity": ("opacity", "opacities"),
    "Enlarged Cardiomediastinum": ("cardiomediastinal",),
    "Pleural Other": (),
    "No Finding": (),
}
for _parent, _children in PARENT_LABELS.items():
    LABEL_TERMS[_parent] = LABEL_TERMS[_parent] + tuple(t for c in _children for t in LABEL_TERMS[c])

#: Lobe names per (side, zone); "middle" on the left is the lingula.
LOBES: dict[tuple[str, str], str] = {
    ("right", "upper"): "right upper lobe",
    ("right", "middle"): "right middle lobe",
    ("right", "lower"): "right lower lobe",
    ("left", "upper"): "left upper lobe",
    ("left", "middle"): "lingula",
    ("left", "lower"): "left lower lobe",
    ("bilateral", "upper"): "bilateral upper lobes",
    ("bilateral", "middle"): "right middle lobe and lingula",
    ("bilateral", "lower"): "bilateral lower lobes",
}

#: Zone words: (preposition, phrase) templates with ``{side}``; a location phrase is built
#: from one of these or from :data:`LOBES`.
ZONE_PHRASES: dict[str, list[tuple[str, str]]] = {
    "upper": [("in the", "{side} upper lung"), ("at the", "{side} lung apex"), ("in the", "{side} upper zone")],
    "middle": [("in the", "{side} mid lung"), ("in the", "{side} midlung zone"), ("in the", "{side} perihilar region")],
    "lower": [("at the", "{side} lung base"), ("at the", "{side} base"), ("in the", "{side} lower lung")],
}
#: Side words used inside location phrases.
SIDE_WORDS: dict[str, list[str]] = {
    "left": ["left"],
    "right": ["right"],
    "bilateral": ["bilateral", "both"],
}
#: Zone phrases for bilateral findings ("both lung bases" reads better than "bilateral base").
BILATERAL_ZONE_PHRASES: dict[str, list[tuple[str, str]]] = {
    "upper": [("in the", "upper lungs bilaterally"), ("at", "both lung apices")],
    "middle": [("in the", "mid lungs bilaterally"), ("in", "both perihilar regions")],
    "lower": [("at", "both lung bases"), ("at the", "bases bilaterally"), ("in the", "lower lungs bilaterally")],
}

#: Severity words per finding (adjectives before the noun). ``"adverb"`` gives "mildly enlarged".
SEVERITY_WORDS: dict[str, dict[str, list[str]]] = {
    "atelectasis": {
        "mild": ["mild", "minimal", "subsegmental"],
        "moderate": ["moderate"],
        "severe": ["severe", "extensive"],
    },
    "cardiomegaly": {"mild": ["mild"], "moderate": ["moderate"], "severe": ["severe", "marked"]},
    "consolidation": {"mild": ["mild", "small"], "moderate": ["moderate"], "severe": ["extensive", "dense"]},
    "edema": {"mild": ["mild"], "moderate": ["moderate"], "severe": ["severe"]},
    "pleural_effusion": {"mild": ["small", "trace"], "moderate": ["moderate"], "severe": ["large"]},
    "pneumothorax": {"mild": ["small", "tiny"], "moderate": ["moderate", "moderate-sized"], "severe": ["large"]},
    "pneumonia": {"mild": ["mild", "early"], "moderate": ["moderate"], "severe": ["extensive", "severe"]},
    "lung_lesion": {"mild": ["small", "8 mm"], "moderate": ["15 mm", "moderate-sized"], "severe": ["large"]},
}
#: Adverbs for "the heart is {adv} enlarged".
SEVERITY_ADVERBS: dict[str, list[str]] = {
    "mild": ["mildly"],
    "moderate": ["moderately"],
    "severe": ["markedly", "severely"],
}

#: Negation cues (a sentence holding one of these negates the findings it names).
NEGATION_PHRASES: tuple[str, ...] = (
    "no",
    "there is no",
    "no evidence of",
    "without",
    "negative for",
    "is not seen",
    "are not seen",
    "normal",
    "within normal limits",
    "unremarkable",
)
#: Hedge cues (a sentence holding one of these makes the findings it names uncertain: label -1).
HEDGE_PHRASES: tuple[str, ...] = (
    "may represent",
    "may reflect",
    "could reflect",
    "possible",
    "possibly",
    "cannot be excluded",
    "questionable",
    "suspicious for",
)

#: Statements of normality per organ and the labels they set to 0. Used only when the organ holds
#: no finding. ``None`` entries set no label.
NORMAL_STATEMENTS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "heart": [
        ("Heart size is normal.", ("Cardiomegaly",)),
        ("The heart size is within normal limits.", ("Cardiomegaly",)),
        ("The cardiomediastinal silhouette is within normal limits.", ("Enlarged Cardiomediastinum",)),
        ("Cardiomediastinal and hilar contours are unremarkable.", ("Enlarged Cardiomediastinum",)),
    ],
    "lungs": [
        ("The lungs are clear.", ()),
        ("Lungs are well expanded and clear.", ()),
        ("There is no focal opacity.", ("Lung Opacity",)),
    ],
    "bones": [
        ("No acute osseous abnormality.", ()),
        ("No displaced rib fracture is seen.", ("Fracture",)),
        ("Osseous structures are unremarkable.", ()),
    ],
}

#: Sentences that carry no label (style only).
FILLER_SENTENCES: dict[str, list[str]] = {
    "PA": ["PA and lateral views of the chest were obtained.", "Frontal and lateral views of the chest."],
    "AP": ["Portable AP upright view of the chest.", "Single portable AP view of the chest was obtained."],
    "low_volumes": ["Lung volumes are low.", "Low lung volumes accentuate the bronchovascular markings."],
    "any": [
        "Hilar contours are stable.",
        "Pulmonary vasculature is not engorged.",
        "Degenerative changes are noted in the thoracic spine.",
        "Mediastinal contours are stable.",
        "The aorta is mildly tortuous.",
    ],
    "comparison": [
        "Comparison is made to the prior study.",
        "Compared to the prior radiograph, there is little interval change.",
        "Since the previous examination, the findings are similar.",
    ],
}

#: Impressions of a study without positive or uncertain findings.
NORMAL_IMPRESSIONS: list[str] = [
    "No acute cardiopulmonary process.",
    "No acute intrathoracic abnormality.",
    "Normal chest radiograph.",
    "No evidence of acute disease.",
]

#: Names of the evaluation classes.
ZEROSHOT_CLASSES: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
RETRIEVAL_CLASSES: tuple[str, ...] = (
    "No Finding",
    "Atelectasis",
    "Cardiomegaly",
    "Edema",
    "Lung Lesion",
    "Pleural Effusion",
    "Pneumonia",
    "Pneumothorax",
)
#: Relation contrasts of ``relations/candidates.csv``.
RELATION_CONTRASTS: tuple[str, ...] = ("side", "zone", "severity", "negation")

# --------------------------------------------------------------------------------------------- word roles
#: The role of every word SynthCXR writes (``word_roles.jsonl`` of every set; ``docs/synthcxr.md``).
ROLES: tuple[str, ...] = ("finding", "location", "severity", "cue", "anatomy", "filler", "header")
#: Roles that carry the clinical content of a report (what an importance module should weigh up).
CLINICAL_ROLES: tuple[str, ...] = ("finding", "location", "severity", "cue")
#: Roles of phrases inside FIXED sentences (normal statements, normal impressions, fillers,
#: indications, device phrases); words in no list are filler. Template sentences tag their slots
#: directly (``report_text``). Fillers and indications use the anatomy list only, so "not" in
#: "Pulmonary vasculature is not engorged." stays filler (it states nothing about a label).
FIXED_TEXT_ROLES: dict[str, tuple[str, ...]] = {
    "finding": (
        "central venous catheter",
        "endotracheal tube",
        "nasogastric tube",
        "enteric tube",
        "picc",
        "focal opacity",
        "fracture",
    ),
    "anatomy": (
        "heart",
        "cardiomediastinal silhouette",
        "cardiomediastinal",
        "hilar contours",
        "hilar",
        "mediastinal contours",
        "lungs",
        "lung",
        "chest",
        "osseous structures",
        "osseous",
        "rib",
        "thoracic spine",
        "aorta",
        "pulmonary vasculature",
        "bronchovascular markings",
        "cardiopulmonary",
        "intrathoracic",
        "carina",
        "svc",
        "cavoatrial junction",
        "diaphragm",
        "stomach",
        "upper extremity",
        "internal jugular",
    ),
    "cue": ("within normal limits", "no evidence of", "normal", "unremarkable", "clear", "no"),
}
