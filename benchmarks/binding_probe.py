"""Why does a model fail (or pass) the two-finding swap? Scores split by path, and where the words look.

For every SynthCXR relations study that has ``swap_side`` foils (two or three findings, the sides swapped
between them: the same words, another binding), this prints

- the swap contrast (share of foils the true caption beats) by the global score, the local score and the
  method's own score, over all binding studies (valid and test halves: a diagnosis, not a reported result);
- how far apart the text side puts a caption and its twin: mean ``cos(h_true, h_swap)`` (1: the same vector);
- on the true captions, where the words look (``model.word_region_attention``): the share of a side word's
  attention on the image half it names (radiology convention: the patient's left is the image's right;
  chance 0.5), and a finding word's peak over uniform and its ``cos(e_w, c_w)``;
- what SRM's nodes can know about a finding's side: the share of a lateral finding's word occurrences whose
  attention puts more mass on the image half of *its* finding (from the study's annotations) than on the
  other half (chance 0.5), and, for RECLF, the shares of finding-word and side-word occurrences that are among
  the nodes SRM reasons over (``srm_topk``: a kept word has a non-zero relation row or column).

It also asks whether the *image* side holds the binding at all (``--image-probe``): per finding type, a
logistic regression on frozen image features predicts the side of that finding in images with two
different findings on opposite sides (trained on the pretraining table's train split, scored on the
relations studies), from the global vector and from the region vectors (flattened, so they keep the grid);
beside it the same probe on one-finding images (side without binding) and on a random-init encoder of the
same architecture (what the grid's geometry gives for free).

``--split valid`` keeps one half of the relations studies (designs are chosen on valid); ``--srm-topk K`` serves a
RECLF model with SRM over its ``K`` most important word nodes (0: every node), whatever it was trained with.

    python benchmarks/binding_probe.py MODEL_DIR [--synth out/synth-seed1] [--image-probe] [--split valid]
        [--srm-topk K] [--out probe.json]
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
from reclf.evaluate.common import load_table
from reclf.evaluate.tasks.relations import read_candidates
from reclf.evaluate.tasks.relations import wins as tie_or_win
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
def probe(model, root: Path, split: str | None = None) -> dict:
    """The numbers above over the relations studies with a ``swap_side`` foil (of ``split`` only when given)."""
    rel = root / "relations"
    table = load_table(rel, splits=(split,) if split else None, require=("annotations",))
    studies = table.df.set_index("study_id")
    cands = read_candidates(rel / "candidates.csv")
    cands = cands[cands.study_id.isin(studies.index)]
    findings = finding_words(rel / "caption_roles.jsonl")
    wins: dict[str, list[float]] = {"global": [], "local": [], "method": []}
    text_cos, side_mass, peak, cos_find, cos_side = [], [], [], [], []
    own_half: list[float] = []
    kept: dict[str, list[float]] = {"finding": [], "side": []}
    has_srm = srm_aggregator(model) is not None
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
            wins[key].append(mean(tie_or_win(float(s[0]), float(f)) for f in s[1:]))  # a tie counts half
        text_cos.append(float((txt.global_[0] * txt.global_[1:]).sum(-1).mean()))
        if not model.params.needs_local_features:
            continue
        one = txt.index(slice(0, 1))  # the true caption, as already encoded
        attn = model.word_region_attention(img, one)[0]  # [W, R]
        side = int(round(attn.shape[-1] ** 0.5))
        ctx = F.normalize(attn @ img.local[0], dim=-1)
        cos = (F.normalize(one.words[0], dim=-1) * ctx).sum(-1)
        words = [w.lower() for w in one.word_strings[0]]
        annotations = json.loads(studies.loc[sid, "annotations"])
        for ann in annotations:
            if ann["side"] not in ("left", "right"):
                continue
            name = ann["finding"].split()[-1]  # "pleural effusion" -> "effusion"
            for i in (i for i, w in enumerate(words) if w == name):
                amap = attn[i].reshape(side, side)
                image_left, image_right = float(amap[:, : side // 2].sum()), float(amap[:, side // 2 :].sum())
                # the patient's right is the image's left
                own_half.append(float((image_left > image_right) == (ann["side"] == "right")))
        if has_srm:
            edges = model.explain_pairs(image, [true]).relations[0]  # [n, n], zero for nodes SRM left out
            in_graph = (edges.abs().sum(0) + edges.abs().sum(1)) > 0
            names = {a["finding"].split()[-1] for a in annotations}
            for i, w in enumerate(words):
                if w in names or w in ("left", "right"):
                    kept["finding" if w in names else "side"].append(float(in_graph[i]))
        for i, w in enumerate(words):
            if not bool(one.word_mask[0, i]):
                continue
            amap = attn[i].reshape(side, side)
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
        "finding_word_on_own_half": avg(own_half),
        "srm_keeps_finding_word": avg(kept["finding"]),
        "srm_keeps_side_word": avg(kept["side"]),
    }


def lateral_samples(table: pd.DataFrame, binding: bool) -> list[tuple[str, str, int]]:
    """``(image_path, finding, 1 if left)`` for every present left/right finding of a study: in studies whose
    findings sit on both sides (``binding``; each finding type once), or in one-finding studies."""
    out = []
    for path, ann in zip(table.image_path, table.annotations):
        present = [a for a in json.loads(ann) if a.get("certainty") == "present"]
        lateral = [a for a in present if a["side"] in ("left", "right")]
        kinds = [a["finding"] for a in lateral]
        if binding:
            if len({a["side"] for a in lateral}) < 2 or len(set(kinds)) != len(kinds):
                continue
        elif len(present) != 1 or len(lateral) != 1:
            continue
        out += [(path, a["finding"], int(a["side"] == "left")) for a in lateral]
    return out


@torch.no_grad()
def image_features(model, root: Path, paths: list[str], batch: int = 64) -> dict[str, torch.Tensor]:
    """Global ``[N, d]`` and flattened region ``[N, R*d]`` features of the images ``root/path``."""
    glob, regions = [], []
    for i in range(0, len(paths), batch):
        images = torch.stack([preprocess(model, root / p) for p in paths[i : i + batch]])
        feats = model.encode_image(images)
        glob.append(feats.global_)
        regions.append(feats.local.flatten(1))
    return {"global": torch.cat(glob), "regions": torch.cat(regions)}


def side_probe(model, root: Path, binding: bool) -> dict[str, float]:
    """Accuracy of per-finding logistic regressions predicting a finding's side from image features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pre = pd.read_csv(root / "pretrain" / "studies.csv")
    train = lateral_samples(pre[pre.split == "train"], binding)
    if not binding:
        train = train[:2000]  # plenty for a side probe; bounds the time
    test = lateral_samples(pd.read_csv(root / "relations" / "studies.csv"), binding)
    out: dict[str, float] = {"train_samples": len(train), "test_samples": len(test)}
    train_feats = image_features(model, root / "pretrain", [p for p, _, _ in train])  # encoded once, both kinds
    test_feats = image_features(model, root / "relations", [p for p, _, _ in test])
    for kind in ("global", "regions"):
        tr, te = train_feats[kind].numpy(), test_feats[kind].numpy()
        correct = 0
        for finding in sorted({f for _, f, _ in test}):
            i_tr = [i for i, (_, f, _) in enumerate(train) if f == finding]
            i_te = [i for i, (_, f, _) in enumerate(test) if f == finding]
            y_tr = [train[i][2] for i in i_tr]
            y_te = [test[i][2] for i in i_te]
            if len(set(y_tr)) < 2:  # one side only in training: predict it
                correct += sum(y == (y_tr[0] if y_tr else 1) for y in y_te)
                continue
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
            clf.fit(tr[i_tr], y_tr)
            correct += int((clf.predict(te[i_te]) == y_te).sum())
        out[kind] = round(correct / max(1, len(test)), 4)
    return out


def image_probe(model, root: Path) -> dict[str, dict[str, float]]:
    """The side probes on the model and on a random-init encoder of the same architecture."""
    from reclf.methods import create_model

    cfg = model.config
    method = dict(cfg["method"])
    torch.manual_seed(0)
    floor = create_model(method.pop("name"), cfg["image_encoder"], cfg["text_encoder"], **method).eval()
    result = {}
    for name, m in (("model", model), ("random_init", floor)):
        for binding in (True, False):
            result[f"{name}/{'two_findings' if binding else 'one_finding'}"] = side_probe(m, root, binding)
    return result


def srm_aggregator(model):
    """The model's RECLF aggregator when it has SRM, else ``None``."""
    aggregator = getattr(model, "aggregator", None)
    return aggregator if aggregator is not None and aggregator.produces_relations else None


def set_srm_topk(model, k: int) -> None:
    """Serve ``model`` with SRM over its ``k`` most important word nodes (0: every node), whatever it was trained
    with: does a binding learned over one graph survive another at inference?"""
    aggregator = srm_aggregator(model)
    if aggregator is None:
        raise SystemExit(f"--srm-topk: {type(model).__name__} {getattr(model, 'method', '')!r} has no SRM")
    if k > 0 and not aggregator.cfg.irm.before_srm:
        raise SystemExit("--srm-topk > 0 needs IRM's importance before SRM (method.irm_before_srm)")
    aggregator.cfg.srm.topk = k


def emit(result: dict, out: str | None) -> None:
    """Print ``result`` as JSON, and write it to ``out`` (atomically) when given."""
    print(json.dumps(result, indent=1))
    if out:
        atomic_write_json(out, result)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a model folder (reclf export / a demo's models)")
    p.add_argument("--synth", default="out/synth-seed1", help="SynthCXR folder (designs are chosen on seed 1)")
    p.add_argument("--out", default=None, help="also write the numbers as JSON")
    p.add_argument("--image-probe", action="store_true", help="also probe the image features for the binding")
    p.add_argument("--no-text", action="store_true", help="skip the caption scores (with --image-probe)")
    p.add_argument("--split", default=None, choices=("valid", "test"), help="only this half of the relations studies")
    p.add_argument(
        "--srm-topk", type=int, default=None, help="score with SRM over this many top word nodes (0: every node)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = reclf.from_pretrained(args.model).eval()
    result: dict = {"model": args.model, "synth": args.synth, "split": args.split}
    if args.srm_topk is not None:
        set_srm_topk(model, args.srm_topk)
        result["srm_topk"] = args.srm_topk
    if not args.no_text:
        result.update(probe(model, Path(args.synth), args.split))
    if args.image_probe:
        result["image_side_probe"] = image_probe(model, Path(args.synth))
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
