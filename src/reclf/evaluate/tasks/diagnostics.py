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
- **binding** (methods with SRM, reports with two or more findings: SynthCXR's relations set has
  binding studies): for every finding word whose report also has location words of *another*
  finding, the share of its relation row on its *own* finding's location words vs on another
  finding's location words (mean over the other findings), their difference and ratio, and the same
  per location word (the two phrases differ in length). Random word sets are a weak control (
  location words may simply be attractors); another finding's location words are the control that
  matters: a model that binds puts more mass on its own. Computed on the head mean and per SRM head
  (``AggregateOutput.head_relations``, the last layer's attention per head): the head with the
  largest mean own-location mass on these reports and that same head's other-location mass
  (``binding/head_max/*``; the head is selected on the reports it is scored on, so its own mass is
  optimistic, and the other mass of the same head keeps the comparison fair). Without per-head
  relations the head mean stands in (``extra.binding_heads.source``).
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
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reclf.data.synthetic.vocab import CLINICAL_ROLES, ROLES
from reclf.evaluate.baselines import FLOOR_MEANING, FLOOR_SEED
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
    floor: bool = True  # also measure a random-init twin of the same architecture (``floor/*`` metrics)
    floor_seed: int = FLOOR_SEED  # its initialisation: the same for every method


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


def binding_stats(rel: np.ndarray, roles: list[str], links: list[int]) -> dict[str, np.ndarray] | None:
    """Finding word -> own vs another finding's location words in one report's relations.

    ``rel``: ``[n, n]`` (head mean) or ``[H, n, n]`` (per head; row = query word). For every finding
    word linked to finding k whose report has location words of k AND of some other finding, over
    the row without the word itself (renormalised per head): ``own_mass`` (share on k's location
    words), ``other_mass`` (share on one other finding's location words, mean over the other
    findings), ``own_per_word`` / ``other_per_word`` (the same divided by the number of those words).
    Returns each as an array ``[H]`` (``H = 1`` for a 2-D input; the mean over the report's finding
    words, NaN for a head whose rows are all zero) and ``finding_words``; None if no word qualifies.
    """
    rel = np.asarray(rel, dtype=float)
    if rel.ndim == 2:
        rel = rel[None]
    n = len(roles)
    r = np.asarray(roles)
    k_of = np.asarray(links)
    loc = (r == "location") & (k_of >= 0)
    acc: dict[str, list[np.ndarray]] = {k: [] for k in ("own_mass", "other_mass", "own_per_word", "other_per_word")}
    for i in np.flatnonzero((r == "finding") & (k_of >= 0)):
        k = k_of[i]
        others = np.delete(np.arange(n), i)
        own = loc[others] & (k_of[others] == k)
        other_ks = sorted(set(k_of[others][loc[others]].tolist()) - {int(k)})
        if not own.any() or not other_ks:
            continue
        rows = rel[:, i, others]  # [H, n - 1]
        total = rows.sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = rows / np.where(total > 0, total, np.nan)[:, None]
        acc["own_mass"].append(share[:, own].sum(axis=-1))
        acc["own_per_word"].append(share[:, own].sum(axis=-1) / own.sum())
        om, opw = [], []
        for k2 in other_ks:
            sel = loc[others] & (k_of[others] == k2)
            om.append(share[:, sel].sum(axis=-1))
            opw.append(share[:, sel].sum(axis=-1) / sel.sum())
        acc["other_mass"].append(np.mean(om, axis=0))
        acc["other_per_word"].append(np.mean(opw, axis=0))
    if not acc["own_mass"]:
        return None
    out: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a head whose rows are all zero stays NaN
        for key, vals in acc.items():
            out[key] = np.nanmean(np.stack(vals), axis=0)
    out["finding_words"] = np.asarray(float(len(acc["own_mass"])))
    return out


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
    """Per report of a batch: words, word weights, word-word relations (head mean), word -> region attention
    argmax, and the relations per SRM head (``[H, n, n]``; None when the aggregator gives none)."""

    words: list[list[str]]
    pieces: list[np.ndarray]
    weights: list[np.ndarray] | None
    relations: list[np.ndarray] | None
    argmax: list[np.ndarray] | None
    grid: tuple[int, int]
    head_relations: list[np.ndarray] | None = None


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


def model_outputs(model: EvaluableModel, images: torch.Tensor, texts: list[str]) -> BatchOutputs:
    """The word weights, relations and word -> region attention argmax of each (image, report) pair, as the
    model computes them (``model.explain_pairs``: its own aggregator, GLoRIA's learned match scale included);
    only the pairs themselves are scored."""
    ex = model.explain_pairs(images, texts)

    def numpy(values: list[torch.Tensor] | None) -> list[np.ndarray] | None:
        return None if values is None else [v.float().numpy() for v in values]

    argmax = None if ex.attention is None else [a.argmax(dim=-1).numpy() for a in ex.attention]
    return BatchOutputs(ex.words, [p.numpy() for p in ex.pieces], numpy(ex.word_weights), numpy(ex.relations),
                        argmax, ex.grid, numpy(ex.head_relations))


# ---------------------------------------------------------------------------------------------
# the task


def ratio_ci(num: np.ndarray, den: np.ndarray, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """``mean(num) / mean(den)`` over the items where both are defined, with a percentile bootstrap
    interval (items resampled together; NaN where a resample's ``mean(den)`` is 0)."""
    from reclf.evaluate.stats import bootstrap_ci

    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    ok = ~(np.isnan(a) | np.isnan(b))

    def ratio(x: np.ndarray, y: np.ndarray) -> float:
        return float(x.mean() / y.mean()) if len(y) and y.mean() > 0 else float("nan")

    return bootstrap_ci(ratio, a[ok], b[ok], n_boot=n_boot, seed=seed)


def select_head(own: list[np.ndarray | None], other: list[np.ndarray | None]
                ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The head with the largest mean own-location mass over the reports, and per report that head's own
    and other mass (NaN for reports without the statistic). ``own``/``other``: per report ``[H]`` or None."""
    heads = max((len(x) for x in own if x is not None), default=0)
    if heads == 0:
        return np.asarray([]), np.asarray([]), {}
    nan = np.full(heads, np.nan)
    o = np.stack([x if x is not None else nan for x in own])
    t = np.stack([x if x is not None else nan for x in other])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_own, mean_other = np.nanmean(o, axis=0), np.nanmean(t, axis=0)
    h = int(np.nanargmax(np.where(np.isnan(mean_own), -np.inf, mean_own)))
    info = {"heads": heads, "selected": h, "own_mass": [float(v) for v in mean_own],
            "other_mass": [float(v) for v in mean_other],
            "selection": "argmax over heads of the mean own-location mass on these reports"}
    return o[:, h], t[:, h], info


def _box(values: np.ndarray) -> dict[str, float]:
    """Box-plot statistics (matplotlib ``bxp`` keys): quartiles, 1.5 IQR whiskers, mean, n."""
    v = np.asarray(values, dtype=float)
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    iqr = q3 - q1
    lo = float(v[v >= q1 - 1.5 * iqr].min())
    hi = float(v[v <= q3 + 1.5 * iqr].max())
    return {"q1": float(q1), "med": float(med), "q3": float(q3), "whislo": lo, "whishi": hi,
            "mean": float(v.mean()), "n": int(v.size)}


@dataclass
class Measured:
    """The diagnostics of one model on one set of reports (before they become a :class:`TaskResult`)."""

    metrics: dict[str, Estimate]
    not_applicable: dict[str, str]
    info: dict[str, Any]
    extra: dict[str, Any]


def run_diagnostics(loaded: LoadedModel, data: str | Path, out: str | Path | None,
                    cfg: DiagnosticsConfig) -> TaskResult:
    from reclf.evaluate.baselines import floor_model

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
                                       "binding": "another finding's location words (same report, same head)",
                                       "grounding": "share of regions inside the mask"}}
    missing = [str(s) for s in df["study_id"] if str(s) not in records]
    if missing:
        raise ValueError(f"{table.folder / ROLES_FILE}: no roles for {len(missing)} studies (first {missing[0]}); "
                         "the roles file and the table come from different generator runs: regenerate the set")
    found = _measure(model, table, df, records, sections, size, cfg)
    metrics, not_applicable, extra = found.metrics, found.not_applicable, found.extra
    extra["word_weights"] = config["word_weights"]
    floor = floor_model(loaded, cfg.floor_seed) if cfg.floor else None
    extra["floor"] = {"seed": cfg.floor_seed, "meaning": FLOOR_MEANING} if floor is not None else {
        "not_measured": "floor off" if not cfg.floor else "the model is itself a baseline or not a reclf method"}
    if floor is not None:
        twin = _measure(floor, table, df, records, sections, size, cfg)
        metrics |= {f"floor/{k}": v for k, v in twin.metrics.items() if not k.startswith("reference/")}
        extra["floor"]["per_report"] = twin.extra["per_report"]
    result = TaskResult("diagnostics", metrics, config, model_info(loaded), found.info, [cfg.seed], extra)
    if out is not None:
        write_results(result, out)
    print(format_table(result))
    for part, why in not_applicable.items():
        print(f"diagnostics: {part}: not applicable: {why}")
    return result


def _measure(model: EvaluableModel, table: Any, df: Any, records: dict[str, RoleRecord], sections: list[str],
             size: int, cfg: DiagnosticsConfig) -> Measured:
    """Every diagnostic of ``model`` on the reports ``df`` (shuffles drawn from ``cfg.seed`` afresh: a model
    and its random-init floor see the same random word sets)."""
    from reclf.data.reports import study_report_text
    from reclf.evaluate.features import iter_image_batches, prepare_mask

    rng = np.random.default_rng(cfg.seed)
    per: dict[str, list[float]] = {k: [] for k in (
        "importance_auroc", "clinical_share", "uniform_share", "pieces_auroc", "own_mass", "shuffled_mass",
        "nearest_mass", "filler_mass", "own_rr", "shuffled_rr", "nearest_rr", "top1", "unknown_words")}
    per_role_pg: dict[str, list[float]] = {r: [] for r in GROUNDING_ROLES}
    per_role_chance: dict[str, list[float]] = {r: [] for r in GROUNDING_ROLES}
    rel_words = 0
    bind_words = 0
    #: per report: binding statistics on the head mean (scalars) and per head (arrays [H], NaN if none)
    bind: dict[str, list[float]] = {k: [] for k in ("own_mass", "other_mass", "own_per_word", "other_per_word")}
    bind_heads: dict[str, list[np.ndarray | None]] = {"own_mass": [], "other_mass": []}
    has_heads = False
    role_weights: dict[str, list[float]] = {}
    finding_weights: dict[str, list[float]] = {"linked": [], "unlinked": []}
    study_ids: list[str] = []
    samples: list[dict[str, Any]] = []
    bad: list = []
    has_rel = has_attn = False
    paths = [table.folder / p for p in df["image_path"].astype(str)]
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
                for role, v, k in zip(roles, rel_w, links, strict=True):
                    role_weights.setdefault(role, []).append(float(v))
                    if role == "finding":  # a finding drawn in the image, or one the report rules out / hedges
                        finding_weights["linked" if k >= 0 else "unlinked"].append(float(v))
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
            b_mean = binding_stats(outs.relations[j], roles, links) if outs.relations is not None else None
            for key in bind:
                bind[key].append(float(b_mean[key][0]) if b_mean else float("nan"))
            bind_words += int(b_mean["finding_words"]) if b_mean else 0
            b_heads = None
            if outs.head_relations is not None:
                has_heads = True
                b_heads = binding_stats(outs.head_relations[j], roles, links)
            elif b_mean is not None:  # no per-head relations: the head mean is the only "head"
                b_heads = b_mean
            for key in bind_heads:
                bind_heads[key].append(b_heads[key] if b_heads else None)
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
    binding_heads: dict[str, Any] = {}
    if has_rel and bind_words:
        own, other = np.asarray(bind["own_mass"]), np.asarray(bind["other_mass"])
        metrics["binding/own_mass"] = est(bind["own_mass"])
        metrics["binding/other_mass"] = est(bind["other_mass"])
        metrics["binding/own_minus_other"] = est(list(own - other))
        metrics["binding/own_other_ratio"] = ratio_ci(own, other, cfg.n_boot, cfg.seed)
        metrics["binding/own_per_word"] = est(bind["own_per_word"])
        metrics["binding/other_per_word"] = est(bind["other_per_word"])
        h_own, h_other, binding_heads = select_head(bind_heads["own_mass"], bind_heads["other_mass"])
        binding_heads["source"] = ("head_relations (SRM's last layer, per head)" if has_heads
                                   else "head mean (the aggregator gave no per-head relations)")
        per["bind_head_own_mass"] = [float(x) for x in h_own]
        per["bind_head_other_mass"] = [float(x) for x in h_other]
        metrics["binding/head_max/own_mass"] = est(list(h_own))
        metrics["binding/head_max/other_mass"] = est(list(h_other))
        metrics["binding/head_max/own_minus_other"] = est(list(h_own - h_other))
        metrics["binding/head_max/own_other_ratio"] = ratio_ci(h_own, h_other, cfg.n_boot, cfg.seed)
        per["bind_own_mass"], per["bind_other_mass"] = [float(x) for x in own], [float(x) for x in other]
        per["bind_own_minus_other"] = [float(x) for x in own - other]
    elif not has_rel:
        not_applicable["binding"] = f"method {method} has no relation matrix (no SRM)"
    else:
        not_applicable["binding"] = ("no finding word with location words of its own and of another finding "
                                     "(needs reports with two or more findings)")
    if has_attn:
        for role in GROUNDING_ROLES:
            if not np.all(np.isnan(per_role_pg[role])):
                metrics[f"grounding/{role}"] = est(per_role_pg[role])
                metrics[f"grounding/{role}_chance"] = est(per_role_chance[role])
    else:
        not_applicable["grounding"] = f"method {method} has no word-region attention"
    info = data_info(table, None, bad) | {"used": len(study_ids), "relation_finding_words": rel_words,
                                          "binding_finding_words": bind_words,
                                          "binding_reports": int(np.sum(~np.isnan(bind["own_mass"])))
                                          if bind["own_mass"] else 0,
                                          "unknown_word_share": float(np.mean(per["unknown_words"]))}
    extra: dict[str, Any] = {
        "not_applicable": not_applicable,
        "role_boxes": {r: _box(np.asarray(v)) for r, v in sorted(role_weights.items())},
        # the finding role split: words naming a finding drawn in the image ("linked") and finding words of
        # sentences that rule one out ("no pleural effusion": "unlinked"; 37 % of them in the SynthCXR relations set)
        "finding_boxes": {k: _box(np.asarray(v)) for k, v in finding_weights.items() if v},
        "per_report": {"study_id": study_ids, **{k: v for k, v in per.items() if v}},
        "grounding_per_report": {r: v for r, v in per_role_pg.items() if v},
        "binding_heads": binding_heads,
        "samples": samples,
    }
    return Measured(metrics, not_applicable, info, extra)


# ---------------------------------------------------------------------------------------------
# comparing runs (for the demo report)

#: per-report keys of ``extra.per_report`` that the paired table compares, with their labels
PAIRED_KEYS: dict[str, str] = {
    "importance_auroc": "importance AUROC",
    "clinical_share": "clinical weight share",
    "own_mass": "relation mass finding->own location",
    "own_rr": "relation MRR own location",
    "bind_own_minus_other": "own − other-finding location mass",
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
    has no such part), under it the row of its random-init floor (``floor/*``: the same architecture with
    random weights) when the result has one, then the paired differences ``reference - ablation`` over the
    same reports.

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
            ("binding/own_mass", "binding: own-location mass"),
            ("binding/other_mass", "other-finding location mass"),
            ("binding/head_max/own_mass", "best head: own"),
            ("binding/head_max/other_mass", "best head: other"),
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
        floor = [r.get("metrics", {}).get(f"floor/{key}") for key, _ in cols]
        if any(floor):  # the same architecture with random weights: this row's own floor
            lines.append(f"| {_label(r)} · random init | {kind.split(':')[0]} | "
                         + " | ".join(estimate_from_dict(m).fmt() if m else "n/a" for m in floor) + " |")
    # the pretrained models only: a floor (random init) has the reference's method name too
    pretrained = [r for r in results if not _label(r).startswith(("floor", "ceiling"))]
    ref = next((r for r in pretrained if _method(r) == reference), None)
    if ref is not None:
        pairs: list[tuple[str, dict[str, Any]]] = []
        for ab in ablations:
            match = next((r for r in pretrained if _method(r) == ab), None)
            if match is not None:
                pairs.append((ab, match))
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
    "Measured",
    "RoleRecord",
    "align_roles",
    "binding_stats",
    "diagnostics_table",
    "grounding_stats",
    "importance_stats",
    "model_outputs",
    "paired_difference",
    "ratio_ci",
    "ranked_words",
    "read_word_roles",
    "relation_stats",
    "run_diagnostics",
    "select_head",
    "weight_kind",
]
