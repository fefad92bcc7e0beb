"""Why does a model fail (or pass) the two-finding swap? Scores split by path, and where the words look.

For every SynthCXR relations study that has ``swap_side`` foils (two or three findings, the sides swapped
between them: the same words, another binding), this prints

- the swap contrast (share of foils the true caption beats) by the global score, the local score and the
  method's own score, over all binding studies (valid and test halves: a diagnosis, not a reported result);
- how far apart the text side puts a caption and its twin: mean ``cos(h_true, h_swap)`` (1: the same vector);
- on the true captions, where the words look (``model.word_region_attention``): the share of a side word's
  attention on the image half it names (radiology convention: the patient's left is the image's right;
  chance 0.5), and a finding word's peak over uniform and its ``cos(e_w, c_w)``.

    python benchmarks/binding_probe.py MODEL_DIR [--synth out/synth-seed1] [--out probe.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import mean

import pandas as pd
import torch
import torch.nn.functional as F

import reclf
from reclf.methods.inference import preprocess
from reclf.utils.io import atomic_write_json


def finding_words(roles_file: Path) -> set[str]:
    """The lower-cased words SynthCXR marks as findings in any caption."""
    words: set[str] = set()
    with open(roles_file) as fh:
        for line in fh:
            row = json.loads(line)
            words |= {w.lower() for w, r in zip(row["words"], row["roles"]) if r == "finding"}
    return words


@torch.no_grad()
def probe(model, root: Path) -> dict:
    rel = root / "relations"
    cands = pd.read_csv(rel / "candidates.csv")
    studies = pd.read_csv(rel / "studies.csv").set_index("study_id")
    findings = finding_words(rel / "caption_roles.jsonl")
    wins: dict[str, list[float]] = {"global": [], "local": [], "method": []}
    text_cos, side_mass, peak, cos_find, cos_side = [], [], [], [], []
    for sid, group in cands.groupby("study_id"):
        foils = group[group.contrast == "swap_side"].text.tolist()
        if not foils:
            continue
        true = group[group.contrast == "none"].text.iloc[0]
        image = preprocess(model, rel / studies.loc[sid, "image_path"])[None]
        img, txt = model.encode_image(image), model.encode_text([true, *foils])
        scores = {"global": model.global_similarity(img, txt)[0]}
        if model.has_local:
            scores["local"] = model.local_similarity(img, txt)[0]
        scores["method"] = model.similarity(img, txt)[0]
        for key, s in scores.items():
            wins[key].append(float((s[0] > s[1:]).float().mean()))
        text_cos.append(float((txt.global_[0] * txt.global_[1:]).sum(-1).mean()))
        if not model.params.needs_local_features:
            continue
        one = txt.index(slice(0, 1))  # the true caption, as already encoded
        attn = model.word_region_attention(img, one)[0]  # [W, R]
        side = int(round(attn.shape[-1] ** 0.5))
        ctx = F.normalize(attn @ img.local[0], dim=-1)
        cos = (F.normalize(one.words[0], dim=-1) * ctx).sum(-1)
        for i, word in enumerate(one.word_strings[0]):
            if not bool(one.word_mask[0, i]):
                continue
            amap = attn[i].reshape(side, side)
            w = word.lower()
            if w in ("left", "right"):  # the patient's left is the image's right half
                half = amap[:, side // 2 :] if w == "left" else amap[:, : side // 2]
                side_mass.append(float(half.sum()))
                cos_side.append(float(cos[i]))
            elif w in findings:
                peak.append(float(amap.max()) * side * side)
                cos_find.append(float(cos[i]))

    def avg(x: list[float]) -> float | None:
        return round(mean(x), 4) if x else None

    return {
        "binding_studies": len(wins["method"]),
        "swap_side": {k: avg(v) for k, v in wins.items() if v},
        "text_cos_true_vs_swap": avg(text_cos),
        "side_word_mass_on_named_half": avg(side_mass),
        "side_word_cos": avg(cos_side),
        "finding_word_peak_over_uniform": avg(peak),
        "finding_word_cos": avg(cos_find),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a model folder (reclf export / a demo's models)")
    p.add_argument("--synth", default="out/synth-seed1", help="SynthCXR folder (designs are chosen on seed 1)")
    p.add_argument("--out", default=None, help="also write the numbers as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = reclf.from_pretrained(args.model).eval()
    result = {"model": args.model, "synth": args.synth, **probe(model, Path(args.synth))}
    print(json.dumps(result, indent=1))
    if args.out:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
