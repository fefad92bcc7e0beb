"""Method hyper-parameters: one typed dataclass, and the registry of method presets.

Every method is the same composition of parts — image and text encoders, projections, a global
contrastive loss, optionally a local matcher + aggregator + local loss, MGCA's token and prototype
losses — switched on and tuned by these parameters. A preset is therefore a handful of values, not
a copy of another method with edits; the defaults below follow each method's paper and code
(docs/methods.md lists the sources), with one deliberate change for like-for-like comparison: every
method projects to the same joint width ``embed_dim`` (128, MGCA's and BioViL's choice).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from reclf.config import ConfigError, from_dict


@dataclass
class MethodParams:
    """The parts a method is composed of, and their settings."""

    name: str = "reclf"
    embed_dim: int = 128
    projection: str = "linear"  # linear (GLoRIA) | mlp (MGCA, ConVIRT's non-linear head)
    projection_hidden: int | None = None  # hidden width of the mlp heads; None: the input width (MGCA: 2048)

    # global image-report contrast: InfoNCE(cos(g, h) / tau_g)
    global_weight: float = 1.0
    # the report's global vector h as the normalised sum of an MLP of each sentence's mean word state, instead
    # of one projection of the whole report's pooled state (a bag of words across sentences: "effusion left,
    # nodule right" and its swapped twin pool to nearly the same vector); the MLP sees one sentence's finding
    # and place together, so h can hold their conjunction (any method can use it)
    sentence_global: bool = False
    global_temperature: float = 0.07
    learn_temperature: bool = False
    i2t_weight: float = 0.5  # weight of image->report (ConVIRT: 0.75); report->image gets 1 - it
    sum_directions: bool = False  # GLoRIA and MGCA add the two directions instead of averaging

    # all-pairs local matching (GLoRIA, RECLF): attention -> aggregator -> InfoNCE(s / tau_l)
    local_weight: float = 0.0  # 0: no local matcher
    match_mode: str = "softmax"  # softmax | gloria (double softmax)
    match_temperature: float = 0.1  # tau_a (gloria mode: 1 / temp1 = 0.25)
    # gloria mode: cosines x scale before the softmax over words (GLoRIA's raw feature norms play this role;
    # on unit vectors the double softmax is otherwise nearly uniform, docs/methods.md); learned, in [1, 100]
    match_scale: float = 10.0
    learn_match_scale: bool = True
    aggregator: str = "srm+irm"  # mean | max | lse | irm | srm+lse | srm+irm
    lse_gamma: float = 5.0  # GLoRIA temp2
    local_temperature: float = 0.1  # tau_l (GLoRIA: 1 / temp3)
    d_z: int = 64  # RECLF matching-vector width
    # RECLF: the global matching z_0 = W_0 (h ⊙ g) joins the matching graph as node 0 (IRM weighs it beside the
    # words, SRM relates it to them); false: the local score is built from the word matchings alone
    global_node: bool = True
    srm_layers: int = 1
    srm_heads: int = 4
    srm_topk: int = 0  # SRM over the k most important word nodes of each pair (by IRM before SRM); 0: all
    sentence_edges: bool = False
    # RECLF's binding design (docs/methods.md, "SRM that binds"): each a switch with its own ablation
    srm_prenorm: bool = False  # SRM as pre-norm residual layers starting at the identity (keeps match strength)
    structure_edges: bool = False  # SRM edges biased by relative word distance / same sentence
    grounding_edges: bool = False  # SRM edges biased by the overlap of the two words' region-attention maps
    # SRM messages carry that overlap too: node i's head-h message gains (sum_j alpha_ij G_ij) r_h, so how well a
    # finding and the location words it listens to look at the same place reaches the node and the score
    grounding_values: bool = False
    # SRM messages carry cross-matchings W_z(e_i ⊙ c_j): a finding hears how well *it* matches where its location
    # word looks, which swapping the places between two findings changes
    cross_values: bool = False
    node_where: bool = False  # matching nodes carry where their word looks (attention centroid, spread, peak)
    irm_text_prior: bool = False  # IRM: + MLP(e_w), an importance learned from the word itself
    irm_cos_prior: bool = False  # IRM: + gamma * cos(e_w, c_w) (starts as log-sum-exp's weights)
    irm_before_srm: bool = False  # IRM scores importance from the matchings before SRM (pools those after)
    # the matcher: each word's attention also gets (U e_w) . phi(r), a learned look at a *place* by the word's
    # meaning (softmax mode; any local method can use it)
    region_positions: bool = False
    # phrase nodes: each sentence of a report also attends over the regions as one query, the normalised sum
    # of its valid words (reclf.align.matching.append_phrase_nodes), and joins the matchings as a node. A word
    # looks alone ("effusion" finds the effusion, "left" the left side, whatever the report pairs them with);
    # a phrase's single softmax peaks where what *and* where agree, so two findings' places swapped between
    # them change its matching (any local method can use it)
    phrase_nodes: bool = False
    # binding-aware negatives in the local loss: each image also scores its own report with the sides
    # ("side": left <-> right) or sides and zones ("side+zone": also upper <-> lower) swapped
    # (reclf.data.reports.swap_laterality); any local method can use it (GLoRIA's "+trick" rows)
    binding_negatives: str = "none"  # none | side | side+zone
    # the swapped twin also joins the image->report softmax of the *global* InfoNCE (its cosine with the image's
    # global vector): the report vector h is then pushed to tell a report from its twin (with
    # ``sentence_global``, h can hold each sentence's finding-place conjunction). Any method can use it
    binding_global: bool = False
    # weight of the pairwise binding term (own report vs its swapped twin alone); 0: the twins only join
    # the local InfoNCE as extra negatives
    binding_weight: float = 0.0
    # which twins the binding term scores: "changed" (every report the swap changes) or "both-sides" (only reports
    # that name both left and right, as two findings on opposite sides do: a one-finding flip is solvable by side
    # alone, these only by binding each finding to its side)
    binding_term_on: str = "changed"
    # sentence claims: each sentence of a report that the side swap changes ("moderate left lower lobe
    # consolidation") is a claim about the image. The image's global vector g must score it above the same
    # sentence with its side flipped (the twin's sentence), and the sentence must pick its image among the
    # batch's (sentence -> image InfoNCE); both through a claim head of its own (an MLP of the sentence's mean
    # word state, at tau_g; not used at inference). The contrastive analogue of per-(finding, side) labels, which
    # do teach this encoder the two-finding binding (benchmarks/binding_ceiling.py); the claims did not, at 500
    # steps (tried, off: docs/methods.md, "fourth round"). Any method can use it. Needs binding_negatives; 0: off
    claim_weight: float = 0.0
    hard_negatives: int = 0  # >0: score only the positive + this many hardest negatives (by global sim)
    # >0: the local InfoNCE within groups of this many consecutive pairs of the (shuffled) batch, not over all
    # B x B pairs: the matching, SRM and IRM then cost B * G pairs instead of B^2 (each image meets G - 1
    # negatives in the local term, all B - 1 in the global one); 0: the whole batch
    local_group: int = 0
    chunk_size: int = 8  # images per chunk in the all-pairs matcher (bounds peak memory)
    checkpoint_chunks: bool = False  # recompute chunks in backward (memory bounded by the chunk)

    # MGCA: token-level intra-pair alignment and prototype clustering
    token_weight: float = 0.0
    token_temperature: float = 0.1
    proto_weight: float = 0.0
    num_prototypes: int = 500
    proto_temperature: float = 0.2
    sinkhorn_eps: float = 0.05
    sinkhorn_iters: int = 3
    freeze_prototypes_epochs: int = 1

    # zero-shot / retrieval score (the method's own inference rule; training is not affected):
    #   global: cos(g, h) (ConVIRT, MGCA)
    #   local: the local score alone
    #   fused: mean of the global and local InfoNCE logits, cos / tau_g and s / tau_l (RECLF)
    #   gloria: GLoRIA's get_similarities, (gamma * max_w cos(e_w, c_w) + cos(g, h)) / 2
    # each is defined for one pair at a time, so no score depends on which other candidates are scored with it
    similarity: str = "global"
    # how the local score pools the words at inference: "aggregator" (the training aggregator) or "max"
    # (GLoRIA's get_local_similarities: the best-matched word, free of log-sum-exp's log(#words) length bias)
    local_inference: str = "aggregator"

    @property
    def has_local(self) -> bool:
        return self.local_weight > 0

    @property
    def needs_local_features(self) -> bool:
        return self.has_local or self.token_weight > 0


# RECLF's parts beyond DESIGN §1, by module, so that an ablation removes a module and only its parts
RECLF_MATCHER: dict[str, Any] = {"binding_negatives": "side+zone", "region_positions": True, "node_where": True}
RECLF_SRM: dict[str, Any] = {
    "srm_prenorm": True,
    "structure_edges": True,
    "grounding_edges": True,
    "sentence_edges": True,  # a finding's location is stated in its sentence: word-word edges stay within it
}
RECLF_IRM: dict[str, Any] = {"irm_text_prior": True, "irm_cos_prior": True, "irm_before_srm": True}
# the local InfoNCE within groups of 8 pairs of the batch: RECLF's per-pair matching vectors, SRM and IRM cost
# B * 8 pairs instead of B^2 (issue 20, cost; chosen on SynthCXR seed 1 with no loss in zero-shot)
RECLF_RECIPE: dict[str, Any] = {"local_group": 8}
# SRM over IRM's 8 most important word nodes of each pair (needs both modules: the full RECLF only)
RECLF_SRM_IRM: dict[str, Any] = {"srm_topk": 8}

# name -> the values that differ from the dataclass defaults
PRESETS: dict[str, dict[str, Any]] = {
    # ConVIRT (Zhang et al. 2020): global only, non-linear heads, tau 0.1, lambda 0.75
    "convirt": {"projection": "mlp", "global_temperature": 0.1, "i2t_weight": 0.75},
    # GLoRIA (Huang et al. 2021): global + attention-weighted local with log-sum-exp pooling;
    # temperatures temp1 4, temp2 5, temp3 10; loss weights 1, 1; directions summed
    "gloria": {
        "global_temperature": 0.1,
        "sum_directions": True,
        "local_weight": 1.0,
        "match_mode": "gloria",
        "match_temperature": 0.25,
        "aggregator": "lse",
        "lse_gamma": 5.0,
        "local_temperature": 0.1,
        "similarity": "gloria",  # its reference's inference: (5 max_w cos + cos_g) / 2, not the training lse
        "local_inference": "max",
    },
    # MGCA (Wang et al. 2022): instance loss tau 0.07, token-level intra-pair alignment tau 0.1,
    # 500 prototypes with Sinkhorn (3 iterations, eps 0.05) at tau 0.2; weights 1 / 1 / 1 as its CLI runs
    "mgca": {
        "projection": "mlp",
        "global_temperature": 0.07,
        "sum_directions": True,
        "token_weight": 1.0,
        "proto_weight": 1.0,
        "projection_hidden": 2048,  # MGCA's GlobalEmbedding / LocalEmbedding hidden_dim
    },
    # RECLF: global + relation-enhanced local (SRM + IRM) over all pairs, with the binding design chosen on
    # SynthCXR seed 1 (docs/methods.md, "What was tried"); the ablations keep everything but their module
    "reclf": {
        "local_weight": 1.0,
        "aggregator": "srm+irm",
        "similarity": "fused",
        **RECLF_RECIPE,
        **RECLF_MATCHER,
        **RECLF_SRM,
        **RECLF_IRM,
        **RECLF_SRM_IRM,
    },
    "reclf-no-srm": {
        "local_weight": 1.0,
        "aggregator": "irm",
        "similarity": "fused",
        **RECLF_RECIPE,
        **RECLF_MATCHER,
        **RECLF_IRM,
    },
    "reclf-no-irm": {
        "local_weight": 1.0,
        "aggregator": "srm+lse",
        "similarity": "fused",
        **RECLF_RECIPE,
        **RECLF_MATCHER,
        **RECLF_SRM,
    },
}

METHODS: tuple[str, ...] = tuple(PRESETS)
BINDING_NEGATIVES: tuple[str, ...] = ("none", "side", "side+zone")
BINDING_TERM_ON: tuple[str, ...] = ("changed", "both-sides")
SIMILARITIES: tuple[str, ...] = ("global", "local", "fused", "gloria")
LOCAL_INFERENCE: tuple[str, ...] = ("aggregator", "max")


def list_methods() -> list[str]:
    """The registered method names."""
    return list(METHODS)


def method_params(name: str, **overrides: Any) -> MethodParams:
    """The preset of ``name`` with ``overrides`` applied; unknown keys or values are clear errors."""
    if name not in PRESETS:
        raise ConfigError(f"unknown method {name!r}; registered methods: {', '.join(METHODS)}")
    values = {**PRESETS[name], **overrides, "name": name}
    params = from_dict(MethodParams, values, prefix="method.")
    _validate(params)
    return params


def _validate(p: MethodParams) -> None:
    from reclf.align.aggregators import AGGREGATORS

    checks = [
        (p.projection in ("linear", "mlp"), f"method.projection must be linear or mlp, got {p.projection!r}"),
        (p.match_mode in ("softmax", "gloria"), f"method.match_mode must be softmax or gloria, got {p.match_mode!r}"),
        (p.aggregator in AGGREGATORS, f"method.aggregator must be one of {AGGREGATORS}, got {p.aggregator!r}"),
        (p.similarity in SIMILARITIES, f"method.similarity must be one of {SIMILARITIES}, got {p.similarity!r}"),
        (
            p.local_inference in LOCAL_INFERENCE,
            f"method.local_inference must be one of {LOCAL_INFERENCE}, got {p.local_inference!r}",
        ),
        (p.similarity == "global" or p.has_local, f"method.similarity={p.similarity!r} needs a local matcher"),
        (p.embed_dim > 0 and p.chunk_size > 0, "method.embed_dim and method.chunk_size must be positive"),
        (0.0 <= p.i2t_weight <= 1.0, "method.i2t_weight must be in [0, 1]"),
        (p.global_temperature > 0 and p.local_temperature > 0, "temperatures must be positive"),
        (p.hard_negatives >= 0, "method.hard_negatives must be >= 0"),
        (
            p.local_group >= 0 and (p.local_group == 0 or p.hard_negatives == 0),
            "method.local_group must be >= 0 and cannot be combined with method.hard_negatives",
        ),
        (
            p.srm_topk >= 0
            and (
                p.srm_topk == 0
                or not p.aggregator.startswith("srm")
                or (p.aggregator == "srm+irm" and p.irm_before_srm)
            ),
            "method.srm_topk must be >= 0; a positive value needs aggregator srm+irm with irm_before_srm "
            "(SRM's nodes are chosen by IRM's importance before SRM; aggregators without SRM ignore it, as they "
            "ignore SRM's other options)",
        ),
        (
            not p.region_positions or (p.has_local and p.match_mode == "softmax"),
            "method.region_positions needs a local matcher in softmax mode",
        ),
        (not p.phrase_nodes or p.has_local, "method.phrase_nodes needs a local matcher (method.local_weight > 0)"),
        (
            p.binding_negatives in BINDING_NEGATIVES,
            f"method.binding_negatives must be one of {BINDING_NEGATIVES}, got {p.binding_negatives!r}",
        ),
        (
            p.binding_weight >= 0 and (p.binding_weight == 0 or p.binding_negatives != "none"),
            "method.binding_weight must be >= 0 and needs method.binding_negatives",
        ),
        (
            p.binding_term_on in BINDING_TERM_ON,
            f"method.binding_term_on must be one of {BINDING_TERM_ON}, got {p.binding_term_on!r}",
        ),
        (
            p.binding_negatives == "none" or p.has_local or p.binding_global or p.claim_weight > 0,
            "method.binding_negatives needs a local matcher (method.local_weight > 0), method.binding_global "
            "or method.claim_weight",
        ),
        (
            p.claim_weight >= 0 and (p.claim_weight == 0 or p.binding_negatives != "none"),
            "method.claim_weight must be >= 0 and needs method.binding_negatives (side or side+zone)",
        ),
        (
            not p.binding_global or p.binding_negatives != "none",
            "method.binding_global needs method.binding_negatives (side or side+zone)",
        ),
        (1.0 <= p.match_scale <= 100.0, f"method.match_scale must be in [1, 100], got {p.match_scale}"),
        (
            p.projection_hidden is None or p.projection_hidden > 0,
            f"method.projection_hidden must be positive or null, got {p.projection_hidden}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def params_dict(p: MethodParams) -> dict[str, Any]:
    return dataclasses.asdict(p)


def resolve_method_section(cfg: Any) -> Any:
    """``cfg`` (a ``reclf.config.Config``) with its ``method`` section resolved through the registry: the name
    and every value that differs from ``MethodParams``' defaults (the preset's and the overrides').

    A run saves this in its ``config.yaml`` and the demo's stage markers key on it, so a change to a method's
    preset in ``PRESETS`` is a changed recipe, never a stale run reused; a new switch that is off by default
    leaves old recipes as they were. Resolving twice gives the same section.

    A value is kept when it differs from the dataclass default *or from the preset*: an override that sets a
    preset's switch back to the default (``method.binding_negatives=none`` on RECLF) is what the run trains
    with, and the next resolution must not fill the preset's value back in.
    """
    method = dict(cfg.method)
    name = method.pop("name", None)
    if name not in PRESETS:  # not a registered method (a model passed in by hand): nothing to resolve
        return cfg
    defaults = params_dict(MethodParams())
    preset = params_dict(method_params(name))
    resolved = params_dict(method_params(name, **method))
    section = {
        "name": name,
        **{k: v for k, v in resolved.items() if k != "name" and (v != defaults[k] or v != preset[k])},
    }
    return dataclasses.replace(cfg, method=section)
