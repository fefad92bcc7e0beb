"""Aggregators: the local-matchings of one image x report pair -> one score.

The swappable part that makes the ablations "pooling vs SRM vs IRM vs both" a config change
(DESIGN §1). Every aggregator has the same interface::

    forward(words, context, word_mask, sentence_ids, img_global, txt_global) -> AggregateOutput

with ``words[T, W, d]`` (shared by all images) or ``[I, T, W, d]`` (one report set per image, as
for RECLF's top-k candidates), ``context[I, T, W, d]`` (from ``reclf.align.matching.attend``),
``word_mask[T, W]`` / ``[I, T, W]``, ``sentence_ids`` likewise, ``img_global[I, d]`` and
``txt_global[T, d]`` / ``[I, T, d]``. All pairs are processed at once (flattened to ``P = I*T``);
masked words never change any score and a report with no valid word gets a finite score.

Fixed pooling of the per-word cosines ``cos(e_w, c_w)`` (no parameters):

- ``mean`` / ``max`` (GLoRIA's inference uses a max over words);
- ``lse`` — GLoRIA's training score ``log sum_w exp(gamma * cos(e_w, c_w))``, ``gamma = temp2 = 5``
  (``gloria/loss/gloria_loss.py``: ``row_sim.mul_(temp2).exp_().sum().log()``).

RECLF (DESIGN §1) keeps a vector per matching:

- ``z_w = W_z (e_w ⊙ c_w)`` (``d -> d_z``), the global matching ``z_0 = W_0 (h ⊙ g)`` as node 0;
  the product is scaled by ``d`` so that its *mean* is the cosine and ``z`` has unit scale at
  initialisation (a constant factor, absorbed by ``W_z`` — the formula is unchanged);
- **SRM**: ``L`` transformer layers (masked multi-head self-attention = a graph with learned edge
  weights over the fully connected valid matchings, then feed-forward; residual + layer norm,
  post-norm) over ``[z_0, z_1 .. z_W]``; ``sentence_edges=True`` keeps only word-word edges within a
  sentence (node 0 stays connected to all). The head-averaged attention of the last layer is
  returned as ``relations``;
- **IRM**: ``u_w = MLP([z_w ; mean(z)])`` (mean over valid nodes; MLP = Linear -> tanh -> Linear, as in
  attention-filtration scorers), ``beta = softmax(u)`` over valid nodes, ``z_hat = sum_w beta_w z_w``,
  ``s = w^T z_hat + b``; ``beta`` is returned as ``node_weights``.

Names: ``mean``, ``max``, ``lse``, ``irm`` (IRM on the raw matching vectors), ``srm+lse`` (SRM, then a
learned scalar read-out per node pooled by log-sum-exp), ``srm+irm`` (the full RECLF).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reclf.align.masking import masked_logsumexp, masked_max, masked_mean, masked_softmax

AGGREGATORS: tuple[str, ...] = ("mean", "max", "lse", "irm", "srm+lse", "srm+irm")
GLORIA_GAMMA = 5.0  # GLoRIA temp2
COS_EPS = 1e-8
GLOBAL_SENTENCE_ID = -2  # sentence id given to the global node (masked words carry -1)


@dataclass
class AggregateOutput:
    """One score per pair, and what an explanation needs.

    ``node_weights[I, T, N]``: how much each node carried the score (IRM's ``beta``, LSE's softmax,
    mean's uniform weights). ``relations[I, T, N, N]``: SRM's head-averaged attention (row = query node).
    ``N = W`` for word-only aggregators, ``N = W + 1`` when ``global_node`` (node 0 is the global matching).
    """

    score: Tensor  # [I, T]
    node_weights: Tensor | None = None
    relations: Tensor | None = None
    global_node: bool = False


@dataclass
class SRMConfig:
    """Semantic-relation reasoning: transformer layers over the matching graph."""

    layers: int = 1
    heads: int = 4
    ffn_mult: float = 2.0
    dropout: float = 0.0
    sentence_edges: bool = False


@dataclass
class IRMConfig:
    """Importance-relation reasoning: the MLP that scores each node from ``[z_w ; mean(z)]``."""

    hidden: int | None = None  # default: d_z


@dataclass
class AggregatorConfig:
    """Everything ``build_aggregator`` accepts (flat keys ``layers``, ``heads``, ``sentence_edges``... too)."""

    name: str = "srm+irm"
    gamma: float = GLORIA_GAMMA  # lse only
    d_z: int = 64  # matching-vector width (RECLF)
    global_node: bool = True  # z_0 = W_0 (h ⊙ g) joins the graph (RECLF)
    srm: SRMConfig = field(default_factory=SRMConfig)
    irm: IRMConfig = field(default_factory=IRMConfig)


# ---------------------------------------------------------------------------------------------
# the interface


class Aggregator(nn.Module):
    """Base class: pools the matchings of every (image, report) pair. Subclasses implement ``_pool``."""

    name: str = "base"
    global_node: bool = False
    produces_node_weights: bool = True
    produces_relations: bool = False

    def forward(
        self,
        words: Tensor,
        context: Tensor,
        word_mask: Tensor,
        sentence_ids: Tensor,
        img_global: Tensor,
        txt_global: Tensor,
        extras: bool = True,
    ) -> AggregateOutput:
        """Score every pair; ``extras=False`` lets an aggregator skip what only explanations need (SRM's
        attention matrices), which allows fused attention kernels in training."""
        n_img, n_txt, n_words, dim = context.shape
        if words.dim() == 3:
            words = words.unsqueeze(0)
        if word_mask.dim() == 2:
            word_mask = word_mask.unsqueeze(0)
        if sentence_ids.dim() == 2:
            sentence_ids = sentence_ids.unsqueeze(0)
        if txt_global.dim() == 2:
            txt_global = txt_global.unsqueeze(0)
        if words.shape[1:] != (n_txt, n_words, dim) or words.shape[0] not in (1, n_img):
            raise ValueError(f"words {tuple(words.shape)} do not fit context {tuple(context.shape)}")
        if word_mask.shape[1:] != (n_txt, n_words) or sentence_ids.shape[1:] != (n_txt, n_words):
            raise ValueError(
                f"word_mask {tuple(word_mask.shape)} / sentence_ids {tuple(sentence_ids.shape)} "
                f"do not fit context {tuple(context.shape)}"
            )
        if img_global.shape != (n_img, dim) or txt_global.shape[1:] != (n_txt, dim):
            raise ValueError(
                f"img_global {tuple(img_global.shape)} / txt_global {tuple(txt_global.shape)} "
                f"do not fit context {tuple(context.shape)}"
            )
        return self._pool(words, context, word_mask.bool(), sentence_ids, img_global, txt_global, extras)

    def _pool(
        self,
        words: Tensor,
        context: Tensor,
        word_mask: Tensor,
        sentence_ids: Tensor,
        img_global: Tensor,
        txt_global: Tensor,
        extras: bool = True,
    ) -> AggregateOutput:  # pragma: no cover - abstract
        raise NotImplementedError


def word_cosines(words: Tensor, context: Tensor) -> Tensor:
    """``cos(e_w, c_w)`` per pair: words ``[G, T, W, d]`` (G is 1 or I), context ``[I, T, W, d]`` -> ``[I, T, W]``."""
    dot = (words * context).sum(-1)
    norms = words.norm(dim=-1) * context.norm(dim=-1)
    return dot / norms.clamp_min(COS_EPS)


class PoolAggregator(Aggregator):
    """Fixed pooling of the per-word cosines: ``mean``, ``max`` or ``lse`` (GLoRIA, ``gamma`` = temp2)."""

    def __init__(self, kind: str, gamma: float = GLORIA_GAMMA) -> None:
        super().__init__()
        if kind not in ("mean", "max", "lse"):
            raise ValueError(f"unknown pooling {kind!r}; choose mean, max or lse")
        self.name, self.kind, self.gamma = kind, kind, float(gamma)

    def _pool(self, words, context, word_mask, sentence_ids, img_global, txt_global, extras=True) -> AggregateOutput:
        cos = word_cosines(words, context)  # [I, T, W]
        mask = word_mask.expand_as(cos)
        if self.kind == "mean":
            score = masked_mean(cos, mask, dim=-1)
            weights = mask.to(cos.dtype) / mask.sum(-1, keepdim=True).clamp_min(1).to(cos.dtype)
        elif self.kind == "max":
            score, idx = masked_max(cos, mask, dim=-1)
            weights = F.one_hot(idx, cos.shape[-1]).to(cos.dtype) * mask
        else:
            logits = self.gamma * cos
            score = masked_logsumexp(logits, mask, dim=-1)
            weights = masked_softmax(logits, mask, dim=-1)
        return AggregateOutput(score, weights, None, False)

    def extra_repr(self) -> str:
        return f"kind={self.kind}" + (f", gamma={self.gamma}" if self.kind == "lse" else "")


# ---------------------------------------------------------------------------------------------
# RECLF: matching vectors, SRM, IRM


class MatchingVectors(nn.Module):
    """``z_w = W_z (e_w ⊙ c_w)`` and ``z_0 = W_0 (h ⊙ g)`` (DESIGN §1), flattened over pairs: ``[P, N, d_z]``."""

    def __init__(self, dim: int, d_z: int, global_node: bool = True) -> None:
        super().__init__()
        self.dim, self.d_z, self.global_node = dim, d_z, global_node
        self.scale = float(dim)  # sum(e ⊙ c) = cos, so d * (e ⊙ c) has mean cos: unit-scale z at init
        self.word = nn.Linear(dim, d_z, bias=False)
        self.glob = nn.Linear(dim, d_z, bias=False) if global_node else None

    def forward(
        self, words: Tensor, context: Tensor, word_mask: Tensor, img_global: Tensor, txt_global: Tensor
    ) -> tuple[Tensor, Tensor]:
        n_img, n_txt, n_words, dim = context.shape
        # mask and scale the words (small when shared by all images: [1, T, W, d]) and multiply once by the
        # [I, T, W, d] context, instead of two passes over the large product. Padded words are zeroed with
        # ``where`` (so a non-finite padded word cannot leak); their contexts are always finite.
        scaled = torch.where(word_mask.unsqueeze(-1), words, words.new_zeros(())) * self.scale
        prod = scaled * context  # [I, T, W, d]
        z = self.word(prod).reshape(n_img * n_txt, n_words, self.d_z)
        valid = word_mask.expand(n_img, n_txt, n_words).reshape(n_img * n_txt, n_words)
        if self.glob is not None:
            gprod = img_global[:, None, :] * txt_global * self.scale  # [I, T, d]
            z0 = self.glob(gprod).reshape(n_img * n_txt, 1, self.d_z)
            z = torch.cat([z0, z], dim=1)
            valid = torch.cat([valid.new_ones(n_img * n_txt, 1), valid], dim=1)
        return z, valid


def build_edge_mask(valid: Tensor, node_sentence: Tensor | None, global_node: bool) -> Tensor:
    """Allowed edges ``[P, N, N]``: valid-valid pairs (same sentence only when ``node_sentence`` is given,
    the global node connected to all); the diagonal is always allowed so no row is empty."""
    allowed = valid.unsqueeze(2) & valid.unsqueeze(1)
    if node_sentence is not None:
        same = node_sentence.unsqueeze(2) == node_sentence.unsqueeze(1)
        if global_node:
            is_g = torch.zeros_like(valid)
            is_g[:, 0] = True
            same = same | is_g.unsqueeze(2) | is_g.unsqueeze(1)
        allowed = allowed & same
    eye = torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)
    return allowed | eye


def key_padding_mask(valid: Tensor) -> Tensor:
    """Allowed keys ``[P, 1, N]`` (broadcast over the query rows): the valid nodes; a pair with no valid
    node allows all of its keys so that no row is empty.

    For a *valid* query this is exactly ``build_edge_mask(valid, None, ...)`` (valid keys; its own
    diagonal is valid). Padded queries differ (they see the valid keys instead of only themselves), but a
    padded node never reaches a score or a gradient: it is a masked key for every valid query, and IRM /
    log-sum-exp give it zero weight. The ``[P, N, N]`` mask costs ``N`` times more to build and to read in
    the attention kernel (docs/training.md, performance).
    """
    return (valid | ~valid.any(dim=1, keepdim=True)).unsqueeze(1)


class SRMLayer(nn.Module):
    """One post-norm transformer layer over the matching graph: masked MHA + FFN, residual, LayerNorm."""

    def __init__(self, d_z: int, heads: int = 4, ffn_mult: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        if d_z % heads:
            raise ValueError(f"SRM: d_z={d_z} must be divisible by heads={heads}")
        self.heads, self.head_dim = heads, d_z // heads
        self.qkv = nn.Linear(d_z, 3 * d_z)
        self.out = nn.Linear(d_z, d_z)
        hidden = max(1, int(round(ffn_mult * d_z)))
        self.ffn = nn.Sequential(nn.Linear(d_z, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_z))
        self.norm1, self.norm2 = nn.LayerNorm(d_z), nn.LayerNorm(d_z)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, edges: Tensor, need_relations: bool = True) -> tuple[Tensor, Tensor | None]:
        """``edges``: allowed edges ``[P, N, N]`` (``build_edge_mask``) or allowed keys ``[P, 1, N]``
        (``key_padding_mask``). ``need_relations=False`` runs the fused attention kernel (about 2x faster on
        CPU) and returns no attention matrix; the result is the same up to float rounding."""
        p, n, d = x.shape
        # strided views [P, H, N, hd] (no copy): the attention kernels take them as they are
        q, k, v = (t.transpose(1, 2) for t in self.qkv(x).reshape(p, n, 3, self.heads, self.head_dim).unbind(2))
        relations = None
        if need_relations:
            logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # [P, H, N, N]
            attn = masked_softmax(logits, edges.unsqueeze(1), dim=-1)
            mixed = torch.matmul(self.drop(attn), v)
            relations = attn.mean(dim=1)
        else:
            p_drop = self.drop.p if self.training else 0.0
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=edges.unsqueeze(1), dropout_p=p_drop)
        mixed = mixed.transpose(1, 2).reshape(p, n, d)
        x = self.norm1(x + self.drop(self.out(mixed)))
        x = self.norm2(x + self.drop(self.ffn(x)))
        return x, relations


class SRM(nn.Module):
    """Semantic-relation reasoning: ``L`` ``SRMLayer`` s; returns the nodes and the last layer's relations."""

    def __init__(self, d_z: int, cfg: SRMConfig) -> None:
        super().__init__()
        if cfg.layers < 1:
            raise ValueError(f"SRM needs layers >= 1, got {cfg.layers}")
        self.cfg = cfg
        self.layers = nn.ModuleList(SRMLayer(d_z, cfg.heads, cfg.ffn_mult, cfg.dropout) for _ in range(cfg.layers))

    def forward(self, z: Tensor, edges: Tensor, need_relations: bool = True) -> tuple[Tensor, Tensor | None]:
        rel = None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            z, rel = layer(z, edges, need_relations=need_relations and i == last)
        return z, rel


class IRM(nn.Module):
    """Importance-relation reasoning: ``beta = softmax(MLP([z_w ; mean(z)]))``, ``s = w^T sum beta z + b``.

    The first MLP layer on the concatenation is split into a node part and a context part (the same
    linear map), so the per-pair mean is projected once instead of being copied to every node.
    """

    def __init__(self, d_z: int, cfg: IRMConfig) -> None:
        super().__init__()
        hidden = cfg.hidden or d_z
        self.node = nn.Linear(d_z, hidden)
        self.ctx = nn.Linear(d_z, hidden, bias=False)
        self.importance = nn.Linear(hidden, 1)
        self.readout = nn.Linear(d_z, 1)

    def forward(self, z: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        mean = masked_mean(z, valid, dim=1)  # [P, d_z]
        u = self.importance(torch.tanh(self.node(z) + self.ctx(mean).unsqueeze(1))).squeeze(-1)  # [P, N]
        beta = masked_softmax(u, valid, dim=-1)
        z_hat = torch.einsum("pn,pnd->pd", beta, z)
        return self.readout(z_hat).squeeze(-1), beta


class RelationAggregator(Aggregator):
    """RECLF's aggregators: ``irm``, ``srm+lse``, ``srm+irm`` (see the module docstring)."""

    def __init__(self, dim: int, cfg: AggregatorConfig) -> None:
        super().__init__()
        if cfg.name not in ("irm", "srm+lse", "srm+irm"):
            raise ValueError(f"RelationAggregator does not build {cfg.name!r}")
        self.name, self.cfg = cfg.name, cfg
        self.global_node = cfg.global_node
        self.produces_relations = cfg.name.startswith("srm")
        self.matchings = MatchingVectors(dim, cfg.d_z, cfg.global_node)
        self.srm = SRM(cfg.d_z, cfg.srm) if self.produces_relations else None
        self.irm = IRM(cfg.d_z, cfg.irm) if cfg.name.endswith("irm") else None
        self.node_readout = nn.Linear(cfg.d_z, 1) if cfg.name == "srm+lse" else None

    def _pool(self, words, context, word_mask, sentence_ids, img_global, txt_global, extras=True) -> AggregateOutput:
        n_img, n_txt, n_words, _ = context.shape
        z, valid = self.matchings(words, context, word_mask, img_global, txt_global)
        relations = None
        if self.srm is not None:
            node_sentence = None
            if self.cfg.srm.sentence_edges:
                sid = sentence_ids.expand(n_img, n_txt, n_words).reshape(n_img * n_txt, n_words)
                if self.global_node:
                    sid = torch.cat([sid.new_full((sid.shape[0], 1), GLOBAL_SENTENCE_ID), sid], dim=1)
                node_sentence = sid
            if node_sentence is None:  # fully connected: a key mask is the same graph for every valid node
                edges = key_padding_mask(valid)
            else:
                edges = build_edge_mask(valid, node_sentence, self.global_node)
            z, rel = self.srm(z, edges, need_relations=extras)
            if rel is not None:
                relations = (rel * (valid.unsqueeze(2) & valid.unsqueeze(1))).reshape(n_img, n_txt, *rel.shape[1:])
        if self.irm is not None:
            score, weights = self.irm(z, valid)
        else:
            assert self.node_readout is not None
            r = self.node_readout(z).squeeze(-1)
            score = masked_logsumexp(r, valid, dim=-1)
            weights = masked_softmax(r, valid, dim=-1)
        n_nodes = z.shape[1]
        return AggregateOutput(
            score.reshape(n_img, n_txt), weights.reshape(n_img, n_txt, n_nodes), relations, self.global_node
        )


# ---------------------------------------------------------------------------------------------
# factory

_FLAT_SRM = {f.name for f in dataclasses.fields(SRMConfig)}
_FLAT_IRM = {"irm_hidden": "hidden"}


def aggregator_config(name: str, **kwargs: Any) -> AggregatorConfig:
    """Resolve ``name`` + keyword overrides into an ``AggregatorConfig``; unknown keys are an error."""
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; choose one of {AGGREGATORS}")
    top = {f.name for f in dataclasses.fields(AggregatorConfig)} - {"name", "srm", "irm"}
    srm = kwargs.pop("srm", None)
    irm = kwargs.pop("irm", None)
    srm_cfg = srm if isinstance(srm, SRMConfig) else SRMConfig(**(srm or {}))
    irm_cfg = irm if isinstance(irm, IRMConfig) else IRMConfig(**(irm or {}))
    cfg_kwargs: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in top:
            cfg_kwargs[key] = value
        elif key in _FLAT_SRM:
            srm_cfg = dataclasses.replace(srm_cfg, **{key: value})
        elif key in _FLAT_IRM:
            irm_cfg = dataclasses.replace(irm_cfg, **{_FLAT_IRM[key]: value})
        else:
            valid = sorted(top | _FLAT_SRM | set(_FLAT_IRM) | {"srm", "irm"})
            raise ValueError(f"aggregator {name!r}: unknown option {key!r}; valid options: {valid}")
    return AggregatorConfig(name=name, srm=srm_cfg, irm=irm_cfg, **cfg_kwargs)


def build_aggregator(name: str, dim: int, **kwargs: Any) -> Aggregator:
    """Build an aggregator by name (``AGGREGATORS``) for joint dimension ``dim``.

    Options: ``gamma`` (lse), ``d_z``, ``global_node``, ``srm`` (``SRMConfig`` or dict), ``irm``
    (``IRMConfig`` or dict), or flat: ``layers``, ``heads``, ``ffn_mult``, ``dropout``, ``sentence_edges``,
    ``irm_hidden``.
    """
    cfg = aggregator_config(name, **kwargs)
    if name in ("mean", "max", "lse"):
        return PoolAggregator(name, cfg.gamma)
    return RelationAggregator(dim, cfg)


__all__ = [
    "AGGREGATORS",
    "GLORIA_GAMMA",
    "AggregateOutput",
    "Aggregator",
    "AggregatorConfig",
    "IRM",
    "IRMConfig",
    "MatchingVectors",
    "PoolAggregator",
    "RelationAggregator",
    "SRM",
    "SRMConfig",
    "SRMLayer",
    "aggregator_config",
    "build_aggregator",
    "build_edge_mask",
    "key_padding_mask",
    "word_cosines",
]
