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
    head_relations: Tensor | None = None  # [I, T, H, N, N]: SRM's last-layer attention per head


@dataclass
class SRMConfig:
    """Semantic-relation reasoning: transformer layers over the matching graph."""

    layers: int = 1
    heads: int = 4
    ffn_mult: float = 2.0
    dropout: float = 0.0
    sentence_edges: bool = False
    # edges that know structure: a learned bias per head for each relative word distance within a
    # sentence (0..7, 8+), for words of different sentences and for edges to the global node
    structure_edges: bool = False
    # pre-norm residual layers whose output maps start at 0: SRM starts as the identity on the matching
    # vectors (RECLF = reclf-no-srm at step 0) and keeps their magnitudes; post-norm (False, DESIGN §1)
    # layer-normalises every node, which erases how strongly each word matched
    prenorm: bool = False
    # edges that know grounding: per head, lambda_h * log(R * sum_r a_ir a_jr), the overlap of two words'
    # region-attention maps (0 when either map is uniform); lambda_h learned, starting at 0
    grounding_edges: bool = False
    # messages that carry grounding agreement: head h's message to node i gains (sum_j alpha^h_ij G_ij) r_h, with
    # G_ij = log(R sum_r a_ir a_jr) the edge's overlap and r_h learned from 0 (edge features in the values, as
    # graph transformers with edge features do): a bias only changes *which* nodes a finding listens to, while
    # this puts *how well* its own location word looks where it looks into the node, and so into the score
    grounding_values: bool = False
    # messages that carry cross-matchings: head h's message to node i gains sum_j alpha^h_ij (V_x x_ij)_h with
    # x_ij = W_z (d e_i ⊙ c_j) word i matched at the place word j looks (x_ii = z_i without where-features): a
    # finding hears whether *it* is where its location word looks, which the report with the places swapped
    # between two findings changes while every word's own matching stays
    cross_values: bool = False
    # SRM over the k most important word nodes of each pair only (by IRM's logits, scored before SRM), plus
    # the global node; the others pass through unchanged. 0: every node. SRM's cost is ~linear in the
    # nodes, and most of a report's words are filler that IRM weighs down anyway
    topk: int = 0


@dataclass
class IRMConfig:
    """Importance-relation reasoning: the MLP that scores each node from ``[z_w ; mean(z)]``."""

    hidden: int | None = None  # default: d_z
    # text prior: + MLP(e_w), an importance learned from the word alone (shared by every image it is
    # matched with, so every pair's gradient agrees on it)
    text_prior: bool = False
    # + gamma * cos(e_w, c_w) (learned gamma, starting at GLoRIA's 5): IRM starts as log-sum-exp's weights
    cos_prior: bool = False
    # score importance from the matching vectors *before* SRM (pool the vectors after it): after SRM,
    # filler nodes can hold a mix of the others (attention sinks), and IRM then weighs the filler
    before_srm: bool = False


@dataclass
class AggregatorConfig:
    """Everything ``build_aggregator`` accepts (flat keys ``layers``, ``heads``, ``sentence_edges``... too)."""

    name: str = "srm+irm"
    gamma: float = GLORIA_GAMMA  # lse only
    d_z: int = 64  # matching-vector width (RECLF)
    global_node: bool = True  # z_0 = W_0 (h ⊙ g) joins the graph (RECLF)
    # nodes that carry *where*: z_w += W_p omega(a_w), the attention-weighted 2-D Fourier encoding of the
    # region centres, the map's spread and its peak (``where_features``)
    node_where: bool = False
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
    needs_attention: bool = False

    def forward(
        self,
        words: Tensor,
        context: Tensor,
        word_mask: Tensor,
        sentence_ids: Tensor,
        img_global: Tensor,
        txt_global: Tensor,
        extras: bool = True,
        attention: Tensor | None = None,
    ) -> AggregateOutput:
        """Score every pair; ``extras=False`` lets an aggregator skip what only explanations need (SRM's
        attention matrices), which allows fused attention kernels in training. ``attention[I, T, W, R]`` is
        the word -> region attention behind ``context``; aggregators with ``needs_attention`` require it
        (RECLF's where-nodes and grounding edges), the others ignore it."""
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
        if self.needs_attention and (attention is None or attention.shape[:3] != context.shape[:3]):
            got = None if attention is None else tuple(attention.shape)
            raise ValueError(f"aggregator {self.name!r} needs the word-region attention [I, T, W, R]; got {got}")
        return self._pool(words, context, word_mask.bool(), sentence_ids, img_global, txt_global, extras, attention)

    def _pool(
        self,
        words: Tensor,
        context: Tensor,
        word_mask: Tensor,
        sentence_ids: Tensor,
        img_global: Tensor,
        txt_global: Tensor,
        extras: bool = True,
        attention: Tensor | None = None,
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

    def _pool(
        self, words, context, word_mask, sentence_ids, img_global, txt_global, extras=True, attention=None
    ) -> AggregateOutput:
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


def region_centres(n_regions: int, device: torch.device | None = None) -> Tensor:
    """``[R, 2]`` (x, y) centres in [-1, 1] of a square grid of ``R`` cells in row-major order (the order of
    ``ImageFeatures.local``); a grid that is not square is an error (where-features need its geometry)."""
    side = int(round(math.sqrt(n_regions)))
    if side * side != n_regions:
        raise ValueError(f"where-features need a square region grid; got {n_regions} regions")
    axis = (torch.arange(side, device=device, dtype=torch.float32) + 0.5) / side * 2 - 1
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)


#: width of ``region_encoding``
REGION_ENCODING_DIM = 10


def region_encoding(xy: Tensor) -> Tensor:
    """A fixed 2-D Fourier encoding of region centres ``xy[R, 2]`` -> ``[R, 10]``: ``x, y``,
    ``sin / cos(pi x)``, ``sin / cos(2 pi x)`` and the same of ``y``."""
    return torch.cat([xy] + [f(math.pi * k * xy) for k in (1.0, 2.0) for f in (torch.sin, torch.cos)], dim=-1)


#: width of ``where_features``: 2-D Fourier encoding (2 + 8), spread (2), peak (1)
WHERE_DIM = 13


def where_features(attention: Tensor) -> Tensor:
    """Where a word looks, as numbers a layer can compare: ``attention[..., R]`` -> ``[..., WHERE_DIM]``.

    The attention-weighted mean of a fixed encoding of each region centre ``(x, y)`` — ``x, y``,
    ``sin / cos(pi x)``, ``sin / cos(2 pi x)`` and the same of ``y`` (the centroid, and through the
    non-linear terms, how the mass is spread) — plus the variance of ``x`` and of ``y`` and the peak
    ``max_r a_r``. Independent of the grid size, so a model trained at one resolution reads another.
    """
    xy = region_centres(attention.shape[-1], attention.device).to(attention.dtype)  # [R, 2]
    mean = attention @ region_encoding(xy)
    var = (attention @ xy.square()) - mean[..., :2].square()
    peak = attention.amax(dim=-1, keepdim=True)
    return torch.cat([mean, var.clamp_min(0), peak], dim=-1)


class MatchingVectors(nn.Module):
    """``z_w = W_z (e_w ⊙ c_w)`` and ``z_0 = W_0 (h ⊙ g)`` (DESIGN §1), flattened over pairs: ``[P, N, d_z]``.

    With ``where=True`` each word node also carries where its attention looks: ``+ W_p omega(a_w)``
    (``where_features``; the global node carries none).
    """

    def __init__(self, dim: int, d_z: int, global_node: bool = True, where: bool = False) -> None:
        super().__init__()
        self.dim, self.d_z, self.global_node = dim, d_z, global_node
        self.scale = float(dim)  # sum(e ⊙ c) = cos, so d * (e ⊙ c) has mean cos: unit-scale z at init
        self.word = nn.Linear(dim, d_z, bias=False)
        self.glob = nn.Linear(dim, d_z, bias=False) if global_node else None
        self.where = nn.Linear(WHERE_DIM, d_z) if where else None

    def forward(
        self,
        words: Tensor,
        context: Tensor,
        word_mask: Tensor,
        img_global: Tensor,
        txt_global: Tensor,
        attention: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        n_img, n_txt, n_words, dim = context.shape
        # mask and scale the words (small when shared by all images: [1, T, W, d]) and multiply once by the
        # [I, T, W, d] context, instead of two passes over the large product. Padded words are zeroed with
        # ``where`` (so a non-finite padded word cannot leak); their contexts are always finite.
        scaled = torch.where(word_mask.unsqueeze(-1), words, words.new_zeros(())) * self.scale
        prod = scaled * context  # [I, T, W, d]
        z = self.word(prod)
        if self.where is not None:
            if attention is None:
                raise ValueError("node_where needs the word-region attention")
            z = z + self.where(where_features(attention))
        z = z.reshape(n_img * n_txt, n_words, self.d_z)
        valid = word_mask.expand(n_img, n_txt, n_words).reshape(n_img * n_txt, n_words)
        if self.glob is not None:
            gprod = img_global[:, None, :] * txt_global * self.scale  # [I, T, d]
            z0 = self.glob(gprod).reshape(n_img * n_txt, 1, self.d_z)
            z = torch.cat([z0, z], dim=1)
            valid = torch.cat([valid.new_ones(n_img * n_txt, 1), valid], dim=1)
        return z, valid

    def cross(
        self,
        words: Tensor,
        context: Tensor,
        word_mask: Tensor,
        img_global: Tensor,
        txt_global: Tensor,
        keep: Tensor | None = None,
    ) -> Tensor:
        """``x[P, K, K, d_z]``, ``x_ij = W_z (d e_i ⊙ c_j)``: node i's word matched at the place node j's word
        looks (``W_0`` and ``h`` for the global node's row, ``g`` its column), over the nodes ``keep[P, K]``
        (every node when ``None``); ``x_ii`` is node i's matching vector without where-features."""
        n_img, n_txt, n_words, dim = context.shape
        e = torch.where(word_mask.unsqueeze(-1), words, words.new_zeros(())).expand(n_img, n_txt, n_words, dim)
        c = context
        if self.glob is not None:
            e = torch.cat([txt_global.expand(n_img, n_txt, dim).unsqueeze(2), e], dim=2)
            c = torch.cat([img_global[:, None, None, :].expand(n_img, n_txt, 1, dim), c], dim=2)
        e = e.reshape(n_img * n_txt, -1, dim)
        c = c.reshape(n_img * n_txt, -1, dim)
        if keep is not None:
            index = keep.unsqueeze(-1).expand(-1, -1, dim)
            e, c = e.gather(1, index), c.gather(1, index)
        prod = (e * self.scale).unsqueeze(2) * c.unsqueeze(1)  # [P, K, K, d]
        x = self.word(prod)
        if self.glob is not None:  # the global node's rows take W_0 (computed on those rows only)
            if keep is None:  # every node: the global one is node 0
                is_global = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
                is_global[:, 0] = True
            else:
                is_global = keep == 0
            x = x.index_put((is_global,), self.glob(prod[is_global]))
        return x


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


#: structure edges: relative distances 0..MAX_DISTANCE-1 within a sentence, then "farther", "other
#: sentence" and "global node" — one learned bias per bucket and head
MAX_DISTANCE = 8
N_STRUCTURE_BUCKETS = MAX_DISTANCE + 3
OVERLAP_EPS = 1e-4


def structure_buckets(sentence_ids: Tensor, global_node: bool) -> Tensor:
    """``[G, T, N, N]`` bucket of every edge of a report's graph (``sentence_ids[G, T, W]``; depends on the
    text only, so it is built once per report, not per image-report pair)."""
    n_words = sentence_ids.shape[-1]
    pos = torch.arange(n_words, device=sentence_ids.device)
    dist = (pos[:, None] - pos[None, :]).abs().clamp_max(MAX_DISTANCE)  # MAX_DISTANCE = "farther"
    same = sentence_ids.unsqueeze(-1) == sentence_ids.unsqueeze(-2)
    buckets = torch.where(same, dist, torch.full_like(dist, MAX_DISTANCE + 1))
    if global_node:
        buckets = F.pad(buckets, (1, 0, 1, 0), value=MAX_DISTANCE + 2)
    return buckets


def grounding_overlap(attention: Tensor, global_node: bool) -> Tensor:
    """``[I, T, N, N]`` ``log(R * sum_r a_ir a_jr)``: how much two words look at the same place (0 when one
    map is uniform, ``log R`` when both sit on the same region; clamped below at ``log(R * 1e-4)``).
    Edges to the global node get 0."""
    n_regions = attention.shape[-1]
    overlap = torch.matmul(attention, attention.transpose(-1, -2))  # [I, T, W, W]
    g = (overlap * n_regions).clamp_min(OVERLAP_EPS * n_regions).log()
    return F.pad(g, (1, 0, 1, 0)) if global_node else g


def kept_square(x: Tensor, keep: Tensor) -> Tensor:
    """The rows and columns of the kept nodes: ``x[P, ..., N, N]``, ``keep[P, K]`` -> ``[P, ..., K, K]`` (an edge
    mask, the per-head edge biases or the grounding overlap of SRM's subgraph)."""
    p, n, k = x.shape[0], x.shape[-1], keep.shape[1]
    mid = x.shape[1:-2]
    ones = (1,) * len(mid)
    rows = x.gather(-2, keep.view(p, *ones, k, 1).expand(p, *mid, k, n))
    return rows.gather(-1, keep.view(p, *ones, 1, k).expand(p, *mid, k, k))


class SRMLayer(nn.Module):
    """One post-norm transformer layer over the matching graph: masked MHA + FFN, residual, LayerNorm.

    ``bias[P, H, N, N]`` (optional) is added to the attention logits: the structure and grounding edges.
    """

    def __init__(
        self,
        d_z: int,
        heads: int = 4,
        ffn_mult: float = 2.0,
        dropout: float = 0.0,
        prenorm: bool = False,
        edge_values: bool = False,
        cross_values: bool = False,
    ) -> None:
        super().__init__()
        if d_z % heads:
            raise ValueError(f"SRM: d_z={d_z} must be divisible by heads={heads}")
        self.prenorm = prenorm
        self.heads, self.head_dim = heads, d_z // heads
        self.qkv = nn.Linear(d_z, 3 * d_z)
        self.out = nn.Linear(d_z, d_z)
        hidden = max(1, int(round(ffn_mult * d_z)))
        self.ffn = nn.Sequential(nn.Linear(d_z, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_z))
        self.norm1, self.norm2 = nn.LayerNorm(d_z), nn.LayerNorm(d_z)
        self.drop = nn.Dropout(dropout)
        # r_h of ``grounding_values``: what a unit of attention-weighted overlap adds to head h's message
        self.edge_value = nn.Parameter(torch.zeros(heads, self.head_dim)) if edge_values else None
        # V_x of ``cross_values``: the value map of the cross-matchings x_ij (the output map starts at 0 when
        # pre-norm, so the layer still starts as the identity)
        self.cross_value = nn.Linear(d_z, d_z, bias=False) if cross_values else None
        if prenorm:  # residual branches start at 0: the layer starts as the identity
            for lin in (self.out, self.ffn[-1]):
                assert isinstance(lin, nn.Linear)
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def forward(
        self,
        x: Tensor,
        edges: Tensor,
        need_relations: bool = True,
        bias: Tensor | None = None,
        overlap: Tensor | None = None,
        cross: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``edges``: allowed edges ``[P, N, N]`` (``build_edge_mask``) or allowed keys ``[P, 1, N]``
        (``key_padding_mask``). ``need_relations=False`` runs the fused attention kernel (about 2x faster on
        CPU) and returns no attention matrix; the result is the same up to float rounding. The relations
        returned are per head: ``[P, H, N, N]``. ``overlap[P, N, N]``: the edges' grounding overlap, read by
        ``edge_value`` (``grounding_values``; it needs the attention matrix, so the explicit path runs).
        ``cross[P, N, N, d_z]``: the cross-matchings ``x_ij``, read by ``cross_value`` (``cross_values``, explicit
        path too)."""
        p, n, d = x.shape
        edge_values = self.edge_value is not None and overlap is not None
        cross_values = self.cross_value is not None and cross is not None
        h = self.norm1(x) if self.prenorm else x
        # strided views [P, H, N, hd] (no copy): the attention kernels take them as they are
        q, k, v = (t.transpose(1, 2) for t in self.qkv(h).reshape(p, n, 3, self.heads, self.head_dim).unbind(2))
        allowed = edges.unsqueeze(1)
        relations = None
        if need_relations or edge_values or cross_values:
            logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # [P, H, N, N]
            if bias is not None:
                logits = logits + bias
            attn = masked_softmax(logits, allowed, dim=-1)
            dropped = self.drop(attn)
            mixed = torch.matmul(dropped, v)
            if edge_values:
                assert self.edge_value is not None and overlap is not None
                agreement = (dropped * overlap.unsqueeze(1)).sum(-1, keepdim=True)  # [P, H, N, 1]
                mixed = mixed + agreement * self.edge_value.unsqueeze(1)
            if cross_values:
                assert self.cross_value is not None and cross is not None
                xv = self.cross_value(cross).reshape(p, n, n, self.heads, self.head_dim)
                mixed = mixed + torch.einsum("phij,pijhc->phic", dropped, xv)
            relations = attn if need_relations else None
        else:
            p_drop = self.drop.p if self.training else 0.0
            mask = allowed if bias is None else bias.masked_fill(~allowed, float("-inf"))
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop)
        mixed = mixed.transpose(1, 2).reshape(p, n, d)
        if self.prenorm:
            x = x + self.drop(self.out(mixed))
            x = x + self.drop(self.ffn(self.norm2(x)))
        else:
            x = self.norm1(x + self.drop(self.out(mixed)))
            x = self.norm2(x + self.drop(self.ffn(x)))
        return x, relations


class SRM(nn.Module):
    """Semantic-relation reasoning: ``L`` ``SRMLayer`` s; returns the nodes and the last layer's relations
    per head ``[P, H, N, N]``.

    Edge biases (shared by the layers, one value per head): ``structure_edges`` — a learned bias per
    relative word distance / other sentence / global node bucket (``structure_buckets``);
    ``grounding_edges`` — ``lambda_h * log(R sum_r a_ir a_jr)`` (``grounding_overlap``). Both start at 0,
    so a new SRM is the plain content-only graph of DESIGN §1.
    """

    def __init__(self, d_z: int, cfg: SRMConfig) -> None:
        super().__init__()
        if cfg.layers < 1:
            raise ValueError(f"SRM needs layers >= 1, got {cfg.layers}")
        self.cfg = cfg
        self.layers = nn.ModuleList(
            SRMLayer(d_z, cfg.heads, cfg.ffn_mult, cfg.dropout, cfg.prenorm, cfg.grounding_values, cfg.cross_values)
            for _ in range(cfg.layers)
        )
        self.structure = nn.Parameter(torch.zeros(N_STRUCTURE_BUCKETS, cfg.heads)) if cfg.structure_edges else None
        self.grounding = nn.Parameter(torch.zeros(cfg.heads)) if cfg.grounding_edges else None

    @property
    def has_bias(self) -> bool:
        return self.structure is not None or self.grounding is not None

    def edge_bias(self, buckets: Tensor | None, overlap: Tensor | None, n_img: int, n_txt: int) -> Tensor | None:
        """``[P, H, N, N]`` from the report's buckets ``[G, T, N, N]`` and the pairs' overlap ``[I, T, N, N]``."""
        bias = None
        if self.structure is not None and buckets is not None:
            bias = self.structure[buckets].permute(0, 1, 4, 2, 3)  # [G, T, H, N, N]
        if self.grounding is not None and overlap is not None:
            g = overlap.unsqueeze(2) * self.grounding.view(1, 1, -1, 1, 1)  # [I, T, H, N, N]
            bias = g if bias is None else bias + g
        if bias is None:
            return None
        bias = bias.expand(n_img, n_txt, *bias.shape[2:])
        return bias.reshape(n_img * n_txt, *bias.shape[2:])

    def forward(
        self,
        z: Tensor,
        edges: Tensor,
        need_relations: bool = True,
        bias: Tensor | None = None,
        overlap: Tensor | None = None,
        cross: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        rel = None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            need = need_relations and i == last
            z, rel = layer(z, edges, need_relations=need, bias=bias, overlap=overlap, cross=cross)
        return z, rel


class IRM(nn.Module):
    """Importance-relation reasoning: ``beta = softmax(u)``, ``s = w^T sum beta z + b``, with
    ``u_w = MLP([z_w ; mean(z)])`` (DESIGN §1) plus, as options, ``text_prior`` ``+ MLP_t(e_w)`` and
    ``cos_prior`` ``+ gamma * cos(e_w, c_w)`` (the global node: ``cos(g, h)``).

    The first MLP layer on the concatenation is split into a node part and a context part (the same
    linear map), so the per-pair mean is projected once instead of being copied to every node. The
    standard deviation of ``u`` over each pair's valid nodes (mean over pairs) of the last forward pass
    is kept in ``last_logit_std``: the number that says whether the weights have collapsed to uniform.
    """

    def __init__(self, d_z: int, cfg: IRMConfig, dim: int | None = None) -> None:
        super().__init__()
        hidden = cfg.hidden or d_z
        self.node = nn.Linear(d_z, hidden)
        self.ctx = nn.Linear(d_z, hidden, bias=False)
        self.importance = nn.Linear(hidden, 1)
        self.readout = nn.Linear(d_z, 1)
        self.text_prior: nn.Module | None = None
        if cfg.text_prior:
            if dim is None:
                raise ValueError("IRM text_prior needs the word width")
            self.text_prior = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.cos_gamma = nn.Parameter(torch.tensor(GLORIA_GAMMA)) if cfg.cos_prior else None
        self.last_logit_std: Tensor | None = None

    def logits(self, z: Tensor, valid: Tensor, prior: Tensor | None = None) -> Tensor:
        """The importance ``u[P, N]`` of each node of ``z[P, N, d_z]`` (plus the priors)."""
        mean = masked_mean(z, valid, dim=1)  # [P, d_z]
        u = self.importance(torch.tanh(self.node(z) + self.ctx(mean).unsqueeze(1))).squeeze(-1)  # [P, N]
        return u if prior is None else u + prior

    def forward(
        self, z: Tensor, valid: Tensor, prior: Tensor | None = None, u: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Pool ``z[P, N, d_z]`` by importance scored from ``z`` itself, or given as ``u`` (RECLF's
        ``irm_before_srm`` scores the matchings before SRM and pools those after it)."""
        if u is None:
            u = self.logits(z, valid, prior)
        beta = masked_softmax(u, valid, dim=-1)
        with torch.no_grad():
            m = valid.to(u.dtype)
            n = m.sum(-1).clamp_min(1)
            mu = (u * m).sum(-1) / n
            self.last_logit_std = (((u - mu.unsqueeze(-1)).square() * m).sum(-1) / n).sqrt().mean()
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
        self.matchings = MatchingVectors(dim, cfg.d_z, cfg.global_node, where=cfg.node_where)
        self.srm = SRM(cfg.d_z, cfg.srm) if self.produces_relations else None
        self.irm = IRM(cfg.d_z, cfg.irm, dim) if cfg.name.endswith("irm") else None
        self.node_readout = nn.Linear(cfg.d_z, 1) if cfg.name == "srm+lse" else None
        self.needs_attention = cfg.node_where or (
            self.srm is not None and (cfg.srm.grounding_edges or cfg.srm.grounding_values)
        )

    def _irm_prior(self, words, context, word_mask, img_global, txt_global) -> Tensor | None:
        """``[P, N]``: IRM's text and cosine priors (``None`` without either)."""
        assert self.irm is not None
        n_img, n_txt, n_words, _ = context.shape
        prior = None
        if self.irm.text_prior is not None:
            prior = self.irm.text_prior(words).squeeze(-1).expand(n_img, n_txt, n_words)  # words: [G, T, W, d]
        if self.irm.cos_gamma is not None:
            c = self.irm.cos_gamma * word_cosines(words, context)
            prior = c if prior is None else prior + c
        if prior is None:
            return None
        if self.global_node:
            g = img_global[:, None, :] * txt_global  # [I, T, d] (unit vectors: the sum is the cosine)
            g0 = self.irm.cos_gamma * g.sum(-1) if self.irm.cos_gamma is not None else g.new_zeros(g.shape[:2])
            prior = torch.cat([g0.unsqueeze(-1).expand(n_img, n_txt, 1), prior], dim=-1)
        return prior.reshape(n_img * n_txt, -1)

    def _pool(
        self, words, context, word_mask, sentence_ids, img_global, txt_global, extras=True, attention=None
    ) -> AggregateOutput:
        n_img, n_txt, n_words, _ = context.shape
        z, valid = self.matchings(words, context, word_mask, img_global, txt_global, attention)
        relations = head_relations = None
        u = None
        if self.irm is not None and self.cfg.irm.before_srm:  # importance from the matchings before SRM
            u = self.irm.logits(z, valid, self._irm_prior(words, context, word_mask, img_global, txt_global))
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
            bias = overlap = None
            if self.cfg.srm.grounding_edges or self.cfg.srm.grounding_values:
                overlap = grounding_overlap(attention, self.global_node)  # [I, T, N, N]
            if self.srm.has_bias:
                buckets = structure_buckets(sentence_ids, self.global_node) if self.cfg.srm.structure_edges else None
                bias = self.srm.edge_bias(buckets, overlap, n_img, n_txt)
            values = None
            if self.cfg.srm.grounding_values:
                assert overlap is not None
                values = overlap.reshape(n_img * n_txt, *overlap.shape[2:])
            keep = self._srm_nodes(u, valid) if self.cfg.srm.topk > 0 else None
            cross = None
            if self.cfg.srm.cross_values:
                cross = self.matchings.cross(words, context, word_mask, img_global, txt_global, keep)
            if keep is None:
                z, rel = self.srm(z, edges, need_relations=extras, bias=bias, overlap=values, cross=cross)
            else:
                z, rel = self._srm_on(keep, z, valid, edges, bias, extras, values, cross)
            if rel is not None:
                pair_valid = (valid.unsqueeze(2) & valid.unsqueeze(1)).unsqueeze(1)
                rel = (rel * pair_valid).reshape(n_img, n_txt, *rel.shape[1:])
                head_relations, relations = rel, rel.mean(dim=2)
        if self.irm is not None:
            if u is None:
                u = self.irm.logits(z, valid, self._irm_prior(words, context, word_mask, img_global, txt_global))
            score, weights = self.irm(z, valid, u=u)
        else:
            assert self.node_readout is not None
            r = self.node_readout(z).squeeze(-1)
            score = masked_logsumexp(r, valid, dim=-1)
            weights = masked_softmax(r, valid, dim=-1)
        n_nodes = z.shape[1]
        return AggregateOutput(
            score.reshape(n_img, n_txt),
            weights.reshape(n_img, n_txt, n_nodes),
            relations,
            self.global_node,
            head_relations,
        )

    def _srm_nodes(self, u: Tensor | None, valid: Tensor) -> Tensor | None:
        """``[P, K]`` node indices SRM reasons over (``srm.topk``): the global node and the ``topk`` valid word
        nodes with the largest importance; ``None`` when that is every node."""
        n_nodes = valid.shape[1]
        k = self.cfg.srm.topk + int(self.global_node)
        if k >= n_nodes:
            return None
        if u is None:
            raise ValueError("srm.topk needs IRM's importance before SRM (irm_before_srm)")
        rank = u.detach().masked_fill(~valid, float("-inf"))
        if self.global_node:
            rank = rank.clone()
            rank[:, 0] = float("inf")
        return rank.topk(k, dim=1).indices

    def _srm_on(
        self,
        keep: Tensor,
        z: Tensor,
        valid: Tensor,
        edges: Tensor,
        bias: Tensor | None,
        extras: bool,
        overlap: Tensor | None = None,
        cross: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """SRM over the nodes ``keep[P, K]`` only; the other nodes keep their matching vectors. Relations of
        the nodes left out are 0. ``cross`` is already that of the kept nodes ``[P, K, K, d_z]``."""
        assert self.srm is not None
        p, n_nodes, d = z.shape
        if edges.shape[1] == 1:  # fully connected: the key mask of the kept nodes
            sub_edges = key_padding_mask(valid.gather(1, keep))
        else:  # a sentence graph [P, N, N]
            sub_edges = kept_square(edges, keep)
        sub_bias = kept_square(bias, keep) if bias is not None else None  # [P, H, K, K]
        sub_overlap = kept_square(overlap, keep) if overlap is not None else None  # [P, K, K]
        index = keep.unsqueeze(-1).expand(-1, -1, d)
        out, rel = self.srm(
            z.gather(1, index), sub_edges, need_relations=extras, bias=sub_bias, overlap=sub_overlap, cross=cross
        )
        z = z.scatter(1, index, out)
        if rel is not None:
            h, k = rel.shape[1], keep.shape[1]
            cols = rel.new_zeros(p, h, k, n_nodes).scatter(3, keep[:, None, None, :].expand(-1, h, k, -1), rel)
            rel = rel.new_zeros(p, h, n_nodes, n_nodes).scatter(
                2, keep[:, None, :, None].expand(-1, h, -1, n_nodes), cols
            )
        return z, rel


# ---------------------------------------------------------------------------------------------
# factory

_FLAT_SRM = {f.name for f in dataclasses.fields(SRMConfig)}
_FLAT_IRM = {
    "irm_hidden": "hidden",
    "irm_text_prior": "text_prior",
    "irm_cos_prior": "cos_prior",
    "irm_before_srm": "before_srm",
}


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
