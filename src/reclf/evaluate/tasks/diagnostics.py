"""Diagnostics: do the importance and relation modules do what RECLF claims? (``docs/evaluation.md``)

SynthCXR writes the role of every word of every report (``word_roles.jsonl``: finding, location,
severity, cue, anatomy, filler, header, and which finding each word describes). With it, three
questions get numbers instead of pictures, each with a chance level:

- **importance**: do the model's word weights put clinical words (finding, location, severity,
  cue) above filler? Per report, the AUROC of the weights at separating the two (chance 0.5), and
  the share of the total word weight on clinical words (chance: the share of clinical words, what
  uniform weights give). Word weights per method (``WEIGHT_KINDS``): RECLF and reclf-no-srm: IRM's
  ``beta`` over the words (the global node's weight left out, the rest renormalised);
  reclf-no-irm: the softmax of SRM's per-node read-out that its log-sum-exp pooling implies;
  GLoRIA: ``softmax(gamma * cos)``, implied by log-sum-exp; MGCA: the last-layer [CLS] -> word
  attention (summed over a word's WordPiece pieces, as MGCA uses it); ConVIRT: none. A reference
  row: the AUROC of the number of WordPiece pieces of each word (what "long rare words" alone give).
- **semantic relations** (methods with SRM): for every finding word whose finding has location
  words in the report, the share of its relation row (over the other words of the report,
  global node and self left out) on its own location words, the reciprocal rank of the best of them,
  and the same statistics for random word sets of the same size (shuffled roles: chance) and for
  the mass filler words give to the same location words (are location words just attractors?).
- **grounding by role**: the pointing game per word role: a finding / location / severity / cue
  word linked to finding k should point into k's mask; anatomy and filler words are scored against
  the union of the study's masks for contrast. Chance per word: the share of regions in the mask.

Every metric is a mean over reports (the bootstrap unit), with a 95 % percentile interval; the
per-report values are kept in ``extra.per_report`` so two models on the same reports can be
compared pairwise (:func:`paired_difference`, :func:`diagnostics_table`).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reclf.data.synthetic.vocab import CLINICAL_ROLES, ROLES
from reclf.evaluate.common import data_info, load_table, model_info, model_sections, report_bad
from reclf.evaluate.loading import LoadedModel, image_size_of
from reclf.evaluate.metrics import auroc, mask_to_grid
from reclf.evaluate.results import TaskResult, format_table, write_results
from reclf.evaluate.stats import Estimate, mean_ci
from reclf.evaluate.stats import paired_difference as stats_paired_difference
from reclf.methods.interface import EvaluableModel

ROLES_FILE = "word_roles.jsonl"
#: How each aggregator's (or method's) word weights come about (recorded in results).
WEIGHT_KINDS: dict[str, str] = {
    "srm+irm": "IRM beta after SRM (global node dropped, renormalised over words)",
    "irm": "IRM beta (global node dropped, renormalised over words)",
    "srm+lse": "implicit: softmax of SRM's node read-out, the weights its log-sum-exp pooling implies",
    "lse": "implicit: softmax(gamma * cos(e_w, c_w)), the weights GLoRIA's log-sum-exp pooling implies",
    "mean": "implicit: uniform (mean pooling)",
    "max": "implicit: one-hot on the max word (max pooling)",
    "cls": "MGCA: last-layer [CLS] -> word attention (head mean, summed over the word's pieces)",
}
#: Roles reported in the grounding-by-role split (header words are not scored).
GROUNDING_ROLES: tuple[str, ...] = ("finding", "location", "severity", "cue", "anatomy", "filler")


@dataclass
class DiagnosticsConfig:
    sections: list[str] | None = None  # text the model reads; None: the model's own (training) sections
    split: str | None = None  # only rows of this split (None: all)
    max_reports: int | None = None
    shuffles: int = 20  # random word sets per finding word (the shuffled-role baseline)
    image_size: int | None = None
    batch_size: int = 32
    n_boot: int = 1000
    seed: int = 0


# ---------------------------------------------------------------------------------------------
# roles


@dataclass
class RoleRecord:
    """One line of ``word_roles.jsonl``: the words of a report and their roles (parallel lists)."""

    study_id: str
    words: list[str]
    roles: list[str]
    finding: list[int]
    section: list[str] = field(default_factory=list)


def read_word_roles(folder: str | Path) -> dict[str, RoleRecord]:
    """``study_id -> RoleRecord`` from ``folder/word_roles.jsonl`` (errors name the file and line)."""
    path = Path(folder) / ROLES_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no word roles; SynthCXR writes them beside every set since word roles exist "
            "(regenerate with `reclf synth --out DIR`); other data sets have none"
        )
    out: dict[str, RoleRecord] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            rec = RoleRecord(str(d["study_id"]), list(d["words"]), list(d["roles"]), [int(x) for x in d["finding"]],
                             list(d.get("section", [])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: line {n} is not a word-roles record ({exc})") from exc
        if not len(rec.words) == len(rec.roles) == len(rec.finding):
            raise ValueError(f"{path}: line {n} ({rec.study_id}): words, roles and finding differ in length")
        bad = set(rec.roles) - set(ROLES)
        if bad:
            raise ValueError(f"{path}: line {n} ({rec.study_id}): unknown role(s) {sorted(bad)}; known {ROLES}")
        out[rec.study_id] = rec
    return out


def align_roles(words: list[str], record: RoleRecord) -> tuple[list[str], list[int]]:
    """Roles and finding links of a model's ``words`` (tokenizer words, any case) from ``record``.

    The model may read a part of the report (findings + impression), a truncated one (a cut last
    word) or lower-cased text; words are matched in order (longest common blocks), and a word that
    matches nothing gets role ``"unknown"`` and link -1.
    """
    a = [w.lower() for w in words]
    b = [w.lower() for w in record.words]
    roles = ["unknown"] * len(a)
    links = [-1] * len(a)
    for block in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            roles[block.a + k] = record.roles[block.b + k]
            links[block.a + k] = record.finding[block.b + k]
    return roles, links


def ranked_words(words: list[str], weights: Any, roles: list[str] | None = None) -> list[dict[str, Any]]:
    """An explanation's words ordered by the model's own weight (highest first), each with its role
    (``None`` where unknown); ties keep reading order. For explanation figures and tables."""
    w = np.asarray(weights, dtype=float).reshape(-1)
    if len(w) != len(words) or (roles is not None and len(roles) != len(words)):
        raise ValueError(f"ranked_words: {len(words)} words, {len(w)} weights"
                         + ("" if roles is None else f", {len(roles)} roles") + " (must be equal)")
    order = np.argsort(-w, kind="stable")
    return [{"word": words[i], "weight": float(w[i]), "index": int(i),
             "role": None if roles is None or roles[i] == "unknown" else roles[i]} for i in order]


# ---------------------------------------------------------------------------------------------
# per-report statistics (pure numpy: unit-tested on hand-made inputs)


def importance_stats(weights: np.ndarray, roles: list[str]) -> dict[str, float]:
    """AUROC (clinical vs filler), clinical weight share and its uniform-weight chance for one report."""
    w = np.asarray(weights, dtype=float)
    r = np.asarray(roles)
    clin = np.isin(r, CLINICAL_ROLES)
    fill = r == "filler"
    keep = clin | fill
    total = w.sum()
    return {
        "auroc": auroc(clin[keep], w[keep]) if keep.any() else float("nan"),
        "share": float(w[clin].sum() / total) if total > 0 else float("nan"),
        "uniform_share": float(clin.mean()) if len(r) else float("nan"),
    }


def relation_stats(rel: np.ndarray, roles: list[str], links: list[int], rng: np.random.Generator,
                   shuffles: int = 20) -> dict[str, float] | None:
    """Finding word -> own location words in one report's word-word relation matrix ``rel[n, n]``.

    Means over the report's finding words that have own location words (None if there is none):
    ``own_mass`` (share of the row over the other words), ``own_rr`` (1 / rank of the best own
    location word), ``top1``; ``shuffled_mass``, ``shuffled_rr`` (random word sets of the same size,
    ``shuffles`` draws); ``nearest_mass``, ``nearest_rr`` (the same number of words nearest to the
    finding word in reading order, own location words excluded: contextual word features make
    neighbours alike, so adjacency alone raises the rank); ``filler_mass`` (filler words -> the
    same location words: are location words attractors for every word?).
    """
    rel = np.asarray(rel, dtype=float)
    n = len(roles)
    r = np.asarray(roles)
    k_of = np.asarray(links)
    acc: dict[str, list[float]] = {k: [] for k in ("own_mass", "own_rr", "top1", "shuffled_mass", "shuffled_rr",
                                                   "nearest_mass", "nearest_rr", "filler_mass")}
    filler = np.flatnonzero(r == "filler")
    for i in np.flatnonzero((r == "finding") & (k_of >= 0)):
        own = np.flatnonzero((r == "location") & (k_of == k_of[i]))
        if own.size == 0:
            continue
        others = np.delete(np.arange(n), i)
        row = rel[i, others]
        total = row.sum()
        if total <= 0:
            continue
        is_own = np.isin(others, own)
        ranks = np.argsort(np.argsort(-row, kind="stable"), kind="stable") + 1  # 1 = highest
        acc["own_mass"].append(float(row[is_own].sum() / total))
        best = int(ranks[is_own].min())
        acc["own_rr"].append(1.0 / best)
        acc["top1"].append(float(best == 1))
        m = int(is_own.sum())
        masses, rrs = [], []
        for _ in range(shuffles):
            pick = rng.choice(len(others), size=m, replace=False)
            masses.append(row[pick].sum() / total)
            rrs.append(1.0 / ranks[pick].min())
        acc["shuffled_mass"].append(float(np.mean(masses)))
        acc["shuffled_rr"].append(float(np.mean(rrs)))
        # adjacency control: the m words nearest to the finding word (own location words excluded)
        cand = np.flatnonzero(~is_own)
        near = cand[np.argsort(np.abs(others[cand] - i), kind="stable")[:m]]
        acc["nearest_mass"].append(float(row[near].sum() / total) if near.size else float("nan"))
        acc["nearest_rr"].append(float(1.0 / ranks[near].min()) if near.size else float("nan"))
        fm = []
        for f in filler:
            frow = np.delete(rel[f], f)
            fo = np.isin(np.delete(np.arange(n), f), own)
            if frow.sum() > 0:
                fm.append(frow[fo].sum() / frow.sum())
        acc["filler_mass"].append(float(np.mean(fm)) if fm else float("nan"))
    if not acc["own_mass"]:
        return None
    return {k: float(np.nanmean(v)) if v and not np.all(np.isnan(v)) else float("nan") for k, v in acc.items()} | {
        "finding_words": float(len(acc["own_mass"]))}


def grounding_stats(argmax: np.ndarray, roles: list[str], links: list[int], masks: list[np.ndarray],
                    union: np.ndarray) -> dict[str, tuple[float, float]]:
    """Per role: (hit rate, chance) of one report's words. ``argmax[n]``: each word's most attended
    region (flat index); ``masks``: each finding's mask on the region grid (flat bool); ``union``:
    their union. Linked clinical words use their finding's mask; anatomy / filler words the union;
    unlinked clinical words (negated findings, normality cues) are not scored."""
    hits: dict[str, list[float]] = {}
    chance: dict[str, list[float]] = {}
    for j, (role, k) in enumerate(zip(roles, links, strict=True)):
        if role not in GROUNDING_ROLES:
            continue
        if role in CLINICAL_ROLES:
            if k < 0 or k >= len(masks) or not masks[k].any():
                continue
            m = masks[k]
        else:
            if not union.any():
                continue
            m = union
        hits.setdefault(role, []).append(float(m[int(argmax[j])]))
        chance.setdefault(role, []).append(float(m.mean()))
    return {role: (float(np.mean(hits[role])), float(np.mean(chance[role]))) for role in hits}


# ---------------------------------------------------------------------------------------------
# model outputs, batched


@dataclass
class BatchOutputs:
    """Per report of a batch: words, word weights, word-word relations, word -> region attention argmax."""

    words: list[list[str]]
    pieces: list[np.ndarray]
    weights: list[np.ndarray] | None
    relations: list[np.ndarray] | None
    argmax: list[np.ndarray] | None
    grid: tuple[int, int]


def weight_kind(model: EvaluableModel) -> str | None:
    """The key of :data:`WEIGHT_KINDS` for ``model`` (None: the method has no word weights)."""
    method = model.config.get("method")
    if not isinstance(method, dict):
        return None
    if model.has_local:
        return method.get("aggregator")
    if (method.get("token_weight") or 0) > 0:
        return "cls"
    return None


@torch.no_grad()
def model_outputs(model: EvaluableModel, images: torch.Tensor, texts: list[str]) -> BatchOutputs:
    """Encode a batch of (image, report) pairs and read the word weights, relations and attention of
    each pair (only the pairs themselves are scored: ``pairs = [[0], [1], ...]``)."""
    from reclf.align.matching import attend_paired

    tokens = model.tokenizer(texts)
    img = model.encode_image(images)
    txt = model.encode_text(tokens)
    p = model.params
    n = tokens.num_words.tolist()
    b = len(texts)
    p2w = tokens.piece_to_word.numpy()
    pieces = [np.bincount(p2w[i][p2w[i] >= 0], minlength=n[i])[: n[i]] for i in range(b)]
    weights = relations = argmax = None
    kind = weight_kind(model)
    if p.has_local:
        pairs = torch.arange(b, device=img.global_.device)[:, None]
        out = model._local(img, txt, pairs, extras=True)
        off = 1 if out.global_node else 0
        if out.node_weights is not None:
            nw = out.node_weights[:, 0].float().cpu().numpy()
            weights = []
            for i in range(b):
                w = nw[i, off : off + n[i]]
                weights.append(w / w.sum() if w.sum() > 0 else w)
        if out.relations is not None:
            rel = out.relations[:, 0].float().cpu().numpy()
            relations = [rel[i, off : off + n[i], off : off + n[i]] for i in range(b)]
    elif kind == "cls":
        enc = model.text_encoder(tokens.to(model.device), need_cls_attention=True)
        cls = enc.cls_attention.float().cpu().numpy()
        weights = [cls[i, : n[i]] / max(float(cls[i, : n[i]].sum()), 1e-12) for i in range(b)]
    if p.needs_local_features:
        mode = p.match_mode if p.has_local else "softmax"
        temp = p.match_temperature if p.has_local else p.token_temperature
        _, attn = attend_paired(txt.words, img.local, temp, mode, word_mask=txt.word_mask)
        am = attn.argmax(dim=-1).cpu().numpy()
        argmax = [am[i, : n[i]] for i in range(b)]
    return BatchOutputs(tokens.words, pieces, weights, relations, argmax, tuple(img.grid))


# ---------------------------------------------------------------------------------------------
# the task


def _box(values: np.ndarray) -> dict[str, float]:
    """Box-plot statistics (matplotlib ``bxp`` keys): quartiles, 1.5 IQR whiskers, mean, n."""
    v = np.asarray(values, dtype=float)
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    iqr = q3 - q1
    lo = float(v[v >= q1 - 1.5 * iqr].min())
    hi = float(v[v <= q3 + 1.5 * iqr].max())
    return {"q1": float(q1), "med": float(med), "q3": float(q3), "whislo": lo, "whishi": hi,
            "mean": float(v.mean()), "n": int(v.size)}


def run_diagnostics(loaded: LoadedModel, data: str | Path, out: str | Path | None,
                    cfg: DiagnosticsConfig) -> TaskResult:
    from reclf.data.reports import study_report_text
    from reclf.evaluate.features import iter_image_batches, prepare_mask

    model = loaded.model
    table = load_table(data, splits=(cfg.split,) if cfg.split else None)
    records = read_word_roles(table.folder)
    df = table.df if cfg.max_reports is None else table.df.iloc[: cfg.max_reports]
    sections = list(cfg.sections or model_sections(model))
    size = cfg.image_size or image_size_of(model)
    kind = weight_kind(model)
    config = asdict(cfg) | {"image_size": size, "sections": sections,
                            "word_weights": WEIGHT_KINDS.get(kind, None) if kind else None,
                            "chance": {"importance/auroc": 0.5, "importance/clinical_share": "uniform_share",
                                       "relations": "shuffled (random word sets of the same size)",
                                       "grounding": "share of regions inside the mask"}}
    if not hasattr(model, "tokenizer") or not hasattr(model, "params"):
        raise TypeError(f"diagnostics needs a reclf.methods model (tokenizer, params); got {type(model).__name__}")

    missing = [str(s) for s in df["study_id"] if str(s) not in records]
    if missing:
        raise ValueError(f"{table.folder / ROLES_FILE}: no roles for {len(missing)} studies (first {missing[0]}); "
                         "the roles file and the table come from different generator runs: regenerate the set")
    rng = np.random.default_rng(cfg.seed)
    per: dict[str, list[float]] = {k: [] for k in (
        "importance_auroc", "clinical_share", "uniform_share", "pieces_auroc", "own_mass", "shuffled_mass",
        "nearest_mass", "filler_mass", "own_rr", "shuffled_rr", "nearest_rr", "top1", "unknown_words")}
    per_role_pg: dict[str, list[float]] = {r: [] for r in GROUNDING_ROLES}
    per_role_chance: dict[str, list[float]] = {r: [] for r in GROUNDING_ROLES}
    rel_words = 0
    role_weights: dict[str, list[float]] = {}
    study_ids: list[str] = []
    samples: list[dict[str, Any]] = []
    bad: list = []
    has_rel = has_attn = False
    paths = [table.folder / p for p in df["image_path"].astype(str)]
    was_training = model.training
    model.eval()
    try:
        for rows, images in iter_image_batches(paths, size, cfg.batch_size, bad):
            sub = df.iloc[rows]
            texts = [study_report_text(r, sections) for _, r in sub.iterrows()]
            outs = model_outputs(model, images, texts)
            has_rel, has_attn = outs.relations is not None, outs.argmax is not None
            h, w = outs.grid
            for j, (_, row) in enumerate(sub.iterrows()):
                sid = str(row["study_id"])
                study_ids.append(sid)
                roles, links = align_roles(outs.words[j], records[sid])
                per["unknown_words"].append(float(np.mean([r == "unknown" for r in roles])) if roles else 0.0)
                imp = importance_stats(outs.pieces[j], roles)
                per["pieces_auroc"].append(imp["auroc"])
                if outs.weights is not None:
                    imp = importance_stats(outs.weights[j], roles)
                    per["importance_auroc"].append(imp["auroc"])
                    per["clinical_share"].append(imp["share"])
                    per["uniform_share"].append(imp["uniform_share"])
                    rel_w = outs.weights[j] * len(roles)  # 1 = the uniform weight
                    for role, v in zip(roles, rel_w, strict=True):
                        role_weights.setdefault(role, []).append(float(v))
                    if len(samples) < 4:
                        samples.append({"study_id": sid, "text": texts[j],
                                        "ranked": ranked_words(outs.words[j], outs.weights[j], roles)[:12]})
                stats = None
                if outs.relations is not None:
                    stats = relation_stats(outs.relations[j], roles, links, rng, cfg.shuffles)
                for key in ("own_mass", "shuffled_mass", "nearest_mass", "filler_mass", "own_rr", "shuffled_rr",
                            "nearest_rr", "top1"):
                    per[key].append(stats[key] if stats else float("nan"))
                rel_words += int(stats["finding_words"]) if stats else 0
                if outs.argmax is not None:
                    anns = json.loads(row.get("annotations") or "[]") if "annotations" in row else []
                    masks = []
                    for a in anns:
                        rel = a.get("mask") or a.get("mask_path")
                        m = prepare_mask(table.folder / rel, size) if rel else np.zeros((size, size), bool)
                        masks.append(mask_to_grid(m, (h, w)).reshape(-1))
                    union = np.any(masks, axis=0) if masks else np.zeros(h * w, bool)
                    g = grounding_stats(outs.argmax[j], roles, links, masks, union)
                    for role in GROUNDING_ROLES:
                        hit, ch = g.get(role, (float("nan"), float("nan")))
                        per_role_pg[role].append(hit)
                        per_role_chance[role].append(ch)
    finally:
        model.train(was_training)
    report_bad(bad, table)
    if not study_ids:
        raise ValueError(f"{table.folder}: no readable image (of {len(df)})")

    def est(values: list[float]) -> Estimate:
        return mean_ci(np.asarray(values, dtype=float), cfg.n_boot, cfg.seed)

    metrics: dict[str, Estimate] = {}
    not_applicable: dict[str, str] = {}
    method = model.method
    if per["importance_auroc"]:
        metrics["importance/auroc"] = est(per["importance_auroc"])
        metrics["importance/clinical_share"] = est(per["clinical_share"])
        metrics["importance/uniform_share"] = est(per["uniform_share"])
        diff = np.asarray(per["clinical_share"]) - np.asarray(per["uniform_share"])
        metrics["importance/share_minus_uniform"] = est(list(diff))
    else:
        not_applicable["importance"] = f"method {method} has no word weights"
    metrics["reference/pieces_auroc"] = est(per["pieces_auroc"])
    if has_rel and rel_words:
        metrics["relations/own_mass"] = est(per["own_mass"])
        metrics["relations/shuffled_mass"] = est(per["shuffled_mass"])
        metrics["relations/own_minus_shuffled"] = est(list(np.asarray(per["own_mass"]) - per["shuffled_mass"]))
        metrics["relations/nearest_mass"] = est(per["nearest_mass"])
        metrics["relations/own_minus_nearest"] = est(list(np.asarray(per["own_mass"]) - per["nearest_mass"]))
        metrics["relations/filler_mass"] = est(per["filler_mass"])
        metrics["relations/own_mrr"] = est(per["own_rr"])
        metrics["relations/shuffled_mrr"] = est(per["shuffled_rr"])
        metrics["relations/nearest_mrr"] = est(per["nearest_rr"])
        metrics["relations/top1"] = est(per["top1"])
    elif not has_rel:
        not_applicable["relations"] = f"method {method} has no relation matrix (no SRM)"
    else:
        not_applicable["relations"] = "no finding word with location words of its own in these reports"
    if has_attn:
        for role in GROUNDING_ROLES:
            if not np.all(np.isnan(per_role_pg[role])):
                metrics[f"grounding/{role}"] = est(per_role_pg[role])
                metrics[f"grounding/{role}_chance"] = est(per_role_chance[role])
    else:
        not_applicable["grounding"] = f"method {method} has no word-region attention"
    info = data_info(table, None, bad) | {"used": len(study_ids), "relation_finding_words": rel_words,
                                          "unknown_word_share": float(np.mean(per["unknown_words"]))}
    extra: dict[str, Any] = {
        "not_applicable": not_applicable,
        "word_weights": config["word_weights"],
        "role_boxes": {r: _box(np.asarray(v)) for r, v in sorted(role_weights.items())},
        "per_report": {"study_id": study_ids, **{k: v for k, v in per.items() if v}},
        "grounding_per_report": {r: v for r, v in per_role_pg.items() if v},
        "samples": samples,
    }
    result = TaskResult("diagnostics", metrics, config, model_info(loaded), info, [cfg.seed], extra)
    if out is not None:
        write_results(result, out)
    print(format_table(result))
    for part, why in not_applicable.items():
        print(f"diagnostics: {part}: not applicable: {why}")
    return result


# ---------------------------------------------------------------------------------------------
# comparing runs (for the demo report)

#: per-report keys of ``extra.per_report`` that the paired table compares, with their labels
PAIRED_KEYS: dict[str, str] = {
    "importance_auroc": "importance AUROC",
    "clinical_share": "clinical weight share",
    "own_mass": "relation mass finding->own location",
    "own_rr": "relation MRR own location",
}


def paired_difference(a: dict[str, Any], b: dict[str, Any], key: str, n_boot: int = 1000,
                      seed: int = 0) -> Estimate:
    """``a - b`` of per-report ``key`` over the reports both diagnostics results share (paired
    bootstrap over those reports; NaN pairs dropped). ``a``, ``b``: results dicts (``results.json``)."""
    pa, pb = a.get("extra", {}).get("per_report", {}), b.get("extra", {}).get("per_report", {})
    if key not in pa or key not in pb:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    return stats_paired_difference(pa["study_id"], pa[key], pb["study_id"], pb[key], n_boot=n_boot, seed=seed)


def _label(r: dict[str, Any]) -> str:
    m = r.get("model", {})
    return str(m.get("label") or m.get("method") or "?")


def _method(r: dict[str, Any]) -> str:
    return str(r.get("model", {}).get("method") or "")


def diagnostics_table(results: list[dict[str, Any]], reference: str = "reclf",
                      ablations: tuple[str, ...] = ("reclf-no-irm", "reclf-no-srm"), n_boot: int = 1000,
                      seed: int = 0) -> str:
    """Markdown: one row per model with the headline diagnostics (value [95 % CI], n/a where the method
    has no such part), then the paired differences ``reference - ablation`` over the same reports.

    ``results``: diagnostics results dicts (``read_results``); the reference and ablations are found
    by method name (the first run of each).
    """
    from reclf.evaluate.results import estimate_from_dict

    results = [r for r in results if r.get("task") == "diagnostics"]
    cols = [("importance/auroc", "importance AUROC (0.5)"),
            ("importance/clinical_share", "clinical share"),
            ("importance/uniform_share", "uniform share"),
            ("relations/own_mass", "finding->own location mass"),
            ("relations/shuffled_mass", "shuffled mass"),
            ("relations/nearest_mass", "nearest-words mass"),
            ("relations/own_mrr", "own-location MRR"),
            ("relations/shuffled_mrr", "shuffled MRR"),
            ("relations/nearest_mrr", "nearest-words MRR"),
            ("grounding/finding", "pointing: finding"),
            ("grounding/filler", "pointing: filler")]
    lines = ["| model | word weights | " + " | ".join(c[1] for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for r in results:
        cells = []
        for key, _ in cols:
            m = r.get("metrics", {}).get(key)
            cells.append(estimate_from_dict(m).fmt() if m else "n/a")
        kind = r.get("extra", {}).get("word_weights") or "none"
        lines.append(f"| {_label(r)} | {kind.split(':')[0]} | " + " | ".join(cells) + " |")
    # the pretrained models only: a floor (random init) has the reference's method name too
    pretrained = [r for r in results if not _label(r).startswith(("floor", "ceiling"))]
    ref = next((r for r in pretrained if _method(r) == reference), None)
    if ref is not None:
        pairs = [(ab, next((r for r in pretrained if _method(r) == ab), None)) for ab in ablations]
        pairs = [(ab, r) for ab, r in pairs if r is not None]
        if pairs:
            lines += ["", f"Paired differences {reference} − ablation over the same reports "
                      "(mean [95 % CI], paired bootstrap; n/a where either model lacks the part):", "",
                      "| difference | " + " | ".join(PAIRED_KEYS.values()) + " |",
                      "|---|" + "---|" * len(PAIRED_KEYS)]
            for ab, other in pairs:
                cells = [paired_difference(ref, other, k, n_boot, seed).fmt() for k in PAIRED_KEYS]
                lines.append(f"| {reference} − {ab} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = [
    "GROUNDING_ROLES",
    "PAIRED_KEYS",
    "ROLES_FILE",
    "WEIGHT_KINDS",
    "DiagnosticsConfig",
    "RoleRecord",
    "align_roles",
    "diagnostics_table",
    "grounding_stats",
    "importance_stats",
    "model_outputs",
    "paired_difference",
    "ranked_words",
    "read_word_roles",
    "relation_stats",
    "run_diagnostics",
    "weight_kind",
]
