"""Versioned zero-shot prompt files (``src/reclf/prompts/*.yaml``, shipped with the package).

A prompt file names its vocabulary and version and holds
- ``multiclass``: per class either a list of prompts, or the GLoRIA-style parts
  (``severity``, ``subtype``, ``location``) whose every combination is a prompt;
- ``binary``: per label a ``positive`` and a ``negative`` prompt list ("X" vs "no X").

Which prompts are used is part of the result (the file, its version, the count per class, the
sampling seed), so a zero-shot number can always be traced to its exact prompts.

The files are data (the zero-shot task reads them, and so does ``reclf prepare chexpert_8x200`` for
its retrieval queries), so their reader lives in ``data/``, below both.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PARTS = ("severity", "subtype", "location")


@dataclass
class PromptSet:
    name: str
    version: int | str
    path: str
    classes: dict[str, list[str]] = field(default_factory=dict)
    binary: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The file, its name and version, the sha256 of its bytes (which prompts, exactly) and its sizes."""
        from reclf.utils.io import file_sha256

        return {"file": self.path, "name": self.name, "version": self.version,
                "sha256": file_sha256(self.path) if Path(self.path).is_file() else None,
                "prompts_per_class": {k: len(v) for k, v in self.classes.items()}}


def norm_name(name: str) -> str:
    """Class-name matching ignores case, spaces, underscores and hyphens."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def builtin_prompt_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "prompts"


def resolve_prompt_file(spec: str | Path) -> Path:
    """A path, or the name of a built-in prompt file (``chexpert``, ``synthcxr``)."""
    p = Path(spec)
    if p.is_file():
        return p
    cand = builtin_prompt_dir() / f"{spec}.yaml"
    if cand.is_file():
        return cand
    known = sorted(q.stem for q in builtin_prompt_dir().glob("*.yaml"))
    raise FileNotFoundError(f"prompt file {spec!r} not found; give a YAML path or one of {known}")


def expand(entry: Any, where: str) -> list[str]:
    """A class entry -> its prompts (a list as is; parts -> every combination, blanks dropped)."""
    if isinstance(entry, list):
        prompts = [str(p).strip() for p in entry if str(p).strip()]
    elif isinstance(entry, dict):
        order = entry.get("combine", [k for k in PARTS if k in entry])
        lists = []
        for key in order:
            values = entry.get(key)
            if not isinstance(values, list) or not values:
                raise ValueError(f"{where}: {key!r} must be a non-empty list")
            lists.append([str(v) for v in values])
        prompts = [" ".join(w for w in combo if w).strip() for combo in itertools.product(*lists)]
        prompts = list(dict.fromkeys(p for p in prompts if p))  # unique, order kept
    else:
        raise ValueError(f"{where}: expected a list of prompts or a mapping of {list(PARTS)}")
    if not prompts:
        raise ValueError(f"{where}: no prompts")
    return prompts


def load_prompts(spec: str | Path) -> PromptSet:
    path = resolve_prompt_file(spec)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"prompt file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not ({"multiclass", "binary"} & set(data)):
        raise ValueError(f"prompt file {path} needs a 'multiclass' and/or 'binary' section")
    ps = PromptSet(str(data.get("name", path.stem)), data.get("version", 0), str(path))
    for cls, entry in (data.get("multiclass") or {}).items():
        ps.classes[str(cls)] = expand(entry, f"{path}: multiclass.{cls}")
    for label, entry in (data.get("binary") or {}).items():
        if not isinstance(entry, dict) or "positive" not in entry or "negative" not in entry:
            raise ValueError(f"{path}: binary.{label} needs 'positive' and 'negative' prompt lists")
        ps.binary[str(label)] = (expand(entry["positive"], f"{path}: binary.{label}.positive"),
                                 expand(entry["negative"], f"{path}: binary.{label}.negative"))
    return ps


def sample_prompts(prompts: list[str], k: int | None, seed: int) -> list[str]:
    """At most ``k`` prompts, drawn with a seeded generator (GLoRIA samples 5; ``None`` = all)."""
    if k is None or k <= 0 or len(prompts) <= k:
        return list(prompts)
    import numpy as np

    idx = np.random.default_rng(seed).choice(len(prompts), size=k, replace=False)
    return [prompts[i] for i in sorted(idx)]


def match_classes(data_classes: list[str], ps: PromptSet) -> dict[str, str]:
    """Map each class in the data to a prompt-file class; a missing one is an error naming both sides."""
    by_norm = {norm_name(k): k for k in ps.classes}
    out, missing = {}, []
    for c in data_classes:
        key = by_norm.get(norm_name(c))
        if key is None:
            missing.append(c)
        else:
            out[c] = key
    if missing:
        raise ValueError(
            f"classes {missing} of the data have no prompts in {ps.path} (it has {list(ps.classes)}); "
            "pass --prompts with a matching file"
        )
    return out


def synthcxr_prompt_dict() -> dict[str, Any]:
    """The SynthCXR prompt file's content, built from SynthCXR's own vocabulary (its one source of words).

    Per class: severity words x finding synonyms x location phrases (sides and zones the finding
    can take), and "X" / "no X" pairs for the binary tasks. ``scripts``: regenerate the shipped
    ``synthcxr.yaml`` with ``python -m reclf.data.prompts`` after the vocabulary changes.
    """
    from reclf.data.synthetic import vocab as v

    def locations(finding: str) -> list[str]:
        out = []
        for side in v.FINDING_SIDES[finding]:
            if side == "none":
                continue
            zones = [z for z in v.FINDING_ZONES[finding] if z != "none"]
            if not zones:
                out.append(f"{side}" if side != "bilateral" else "bilateral")
                continue
            for zone in zones:
                if side == "bilateral":
                    out += [f"{prep} {phrase}" for prep, phrase in v.BILATERAL_ZONE_PHRASES[zone]]
                else:
                    out += [f"{prep} {phrase.format(side=side)}" for prep, phrase in v.ZONE_PHRASES[zone]]
                    if (side, zone) in v.LOBES:
                        out.append(f"in the {v.LOBES[(side, zone)]}")
        return list(dict.fromkeys(out))

    multiclass: dict[str, Any] = {}
    binary: dict[str, Any] = {}
    for finding in v.FINDINGS:
        label = v.CHEXPERT_LABEL[finding]
        synonyms = list(v.FINDING_SYNONYMS[finding])
        if finding == "support_devices":
            multiclass[label] = synonyms
        elif finding == "cardiomegaly":
            multiclass[label] = synonyms + [f"the heart is {adv} enlarged" for advs in v.SEVERITY_ADVERBS.values()
                                            for adv in advs] + [f"{s} cardiomegaly" for sev in
                                                                v.SEVERITY_WORDS[finding].values() for s in sev]
        else:
            sev = [""] + [w for words in v.SEVERITY_WORDS[finding].values() for w in words]
            locs = locations(finding)
            zones = [z for z in v.FINDING_ZONES[finding] if z != "none"]
            if zones:  # "small consolidation in the left upper lung"
                multiclass[label] = {"severity": sev, "subtype": synonyms, "location": [""] + locs}
            else:  # side words go before the noun: "small left pleural effusion"
                multiclass[label] = {"severity": sev, "location": [""] + locs, "subtype": synonyms,
                                     "combine": ["severity", "location", "subtype"]}
        binary[label] = {"positive": [synonyms[0]], "negative": [f"no {synonyms[0]}"]}
    multiclass["No Finding"] = list(v.NORMAL_IMPRESSIONS) + ["the lungs are clear", "no acute findings"]
    return {"name": "synthcxr", "version": 1, "source": "reclf.data.synthetic.vocab", "multiclass": multiclass,
            "binary": binary}


def write_synthcxr_prompts(path: str | Path | None = None) -> Path:
    from reclf.utils.io import atomic_write_text

    path = Path(path) if path else builtin_prompt_dir() / "synthcxr.yaml"
    header = ("# Zero-shot prompts for SynthCXR, generated from reclf.data.synthetic.vocab by\n"
              "# `python -m reclf.data.prompts` (do not edit by hand; bump `version` when it changes).\n")
    atomic_write_text(path, header + yaml.safe_dump(synthcxr_prompt_dict(), sort_keys=False, width=120))
    return path


if __name__ == "__main__":  # pragma: no cover
    print(write_synthcxr_prompts())
