"""Word -> region attention ("local-matching") for every image x report pair of a batch at once.

Every word ``e_w`` of a report attends over the regions ``v_r`` of an image and gets a context vector
``c_w = sum_r a_wr v_r`` (L2-normalised). Two attention rules (DESIGN §1, anchors §3):

- ``mode="softmax"``: ``a_wr = softmax_r(e_w . v_r / temperature)`` — RECLF, and MGCA's word->patch
  attention (MGCA's ``local_temperature`` 0.1);
- ``mode="gloria"``: GLoRIA / AttnGAN's double softmax: first a softmax over the *words* of the report for
  each region, ``a~_wr = softmax_w(scale * e_w . v_r)`` (valid words only), then a softmax over regions,
  ``a_wr = softmax_r(a~_wr / temperature)``. GLoRIA writes the second step as ``softmax(temp1 * a~)``
  with ``temp1 = 4``, so here ``temperature = 1 / temp1 = 0.25`` (``GLORIA_ATTN_TEMPERATURE``).

Why ``scale``: GLoRIA takes raw dot products of *unnormalised* features (768-d BERT words, a 1x1-conv
of ResNet layer3), whose norms make the first softmax sharp. reclf's joint-space features are unit
vectors, so the same rule on cosines in [-1, 1] is nearly uniform: with 196 regions and 40 words, each
word equal to one region, the peak is 1.17x uniform (normalised entropy 1.000). The gloria mode
therefore multiplies the cosines by ``scale`` (a learned scalar in the model, ``method.match_scale``,
initialised to 10; see docs/methods.md for the measurements). ``scale=1`` is GLoRIA's rule applied
literally to the given features (use it on unnormalised features). The softmax mode's sharpness is
its ``temperature``; ``scale`` is ignored there.

Shapes: ``attend(words[T, W, d], regions[I, R, d]) -> (context[I, T, W, d], attention[I, T, W, R])``.
GLoRIA's code loops over captions in Python, each against all images; here one batched matrix product
covers every pair. ``pairwise_local_scores`` runs attend + an aggregator over chunks of *images*, so
the working memory is ``chunk_size x T x W x (R + d)`` instead of ``I x T x W x (R + d)`` (softmax mode:
``chunk_size x T x W x d``, the attention runs in a fused kernel and is never stored); with
``checkpoint=True`` each chunk is recomputed in the backward pass, so the memory kept for backward is
bounded by the chunk too (it grows linearly with the batch, not quadratically).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from reclf.align.aggregators import (
    REGION_ENCODING_DIM,
    AggregateOutput,
    Aggregator,
    region_centres,
    region_encoding,
)
from reclf.align.masking import masked_softmax

AttentionMode = Literal["softmax", "gloria"]
ATTENTION_MODES: tuple[str, ...] = ("softmax", "gloria")
DEFAULT_ATTN_TEMPERATURE = 0.1  # tau_a: MGCA's local temperature; RECLF's default
GLORIA_TEMP1 = 4.0  # GLoRIA configs/chexpert_pretrain_config.yaml
GLORIA_ATTN_TEMPERATURE = 1.0 / GLORIA_TEMP1  # the same rule written as a divisor
DEFAULT_MATCH_SCALE = 10.0  # gloria mode: initial scale of the cosines before the softmax over words
DEFAULT_CHUNK_SIZE = 8  # images per chunk: bounded memory, still large matrix products
NORM_EPS = 1e-8


def _check(mode: str, temperature: float) -> None:
    if mode not in ATTENTION_MODES:
        raise ValueError(f"unknown attention mode {mode!r}; choose one of {ATTENTION_MODES}")
    if not temperature > 0:
        raise ValueError(f"attention temperature must be > 0, got {temperature}")


def _attend_grouped(
    words: Tensor,
    regions: Tensor,
    temperature: float,
    mode: str,
    word_mask: Tensor | None,
    normalize_context: bool,
    scale: float | Tensor = 1.0,
    need_attention: bool = True,
    position: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Core: ``words[G, T, W, d]`` with ``G`` 1 (shared by all images) or ``I`` (one report set per image).

    ``position[G, T, W, R]`` (softmax mode only): logits added to each word's attention over the regions
    (``region_position_logits``: where a word looks by its meaning, whatever the regions hold).

    Returns ``context[I, T, W, d]`` and ``attention[I, T, W, R]`` (``None`` with ``need_attention=False``).

    ``need_attention=False`` in softmax mode runs ``scaled_dot_product_attention`` (words as queries,
    regions as keys and values, one batch entry per image): the ``[I, T, W, R]`` attention is never
    stored — fused kernels recompute it in the backward pass — so the memory is ``I x T x W x d``. Same
    result up to float rounding (tests/test_align_perf.py); on CPU the same speed, on GPU the
    flash / memory-efficient kernels.
    """
    n_img, n_reg, dim = regions.shape
    g, t, w, d2 = words.shape
    if d2 != dim:
        raise ValueError(f"words have width {d2} but regions {dim}: project both to the joint space first")
    if g not in (1, n_img):
        raise ValueError(f"words must be shared ([1, T, W, d]) or one set per image ([{n_img}, T, W, d]); got {g}")
    q = words.reshape(g, t * w, dim)
    if position is not None and mode != "softmax":
        raise ValueError("region position logits need the softmax attention mode")
    if mode == "softmax" and not need_attention:
        q = q.expand(n_img, t * w, dim) if g == 1 else q
        kv = regions.unsqueeze(1)  # 4-D [I, 1 head, R, d]: only 4-D inputs reach the fused CPU kernel
        bias = None if position is None else position.reshape(g, 1, t * w, n_reg).to(q.dtype)
        context = F.scaled_dot_product_attention(q.unsqueeze(1), kv, kv, attn_mask=bias, scale=1.0 / temperature)
        context = context.reshape(n_img, t, w, dim)
        if normalize_context:
            context = F.normalize(context, dim=-1, eps=NORM_EPS)
        return context, None
    if mode == "softmax":
        q = q / temperature  # scale the small operand, not the [I, T, W, R] product
    elif not (isinstance(scale, int | float) and scale == 1.0):
        q = q * scale  # gloria: sharpen the first softmax (over words)
    # [T*W, d] x [I, d, R] -> [I, T*W, R], R contiguous (the fastest layout for the softmax over regions)
    sim = torch.matmul(q[0], regions.transpose(1, 2)) if g == 1 else torch.bmm(q, regions.transpose(1, 2))
    sim = sim.reshape(n_img, t, w, n_reg)
    if mode == "softmax":
        attn = torch.softmax(sim if position is None else sim + position, dim=-1)
    else:  # GLoRIA: softmax over the report's valid words for each region, then over regions
        if word_mask is not None:
            # in place (the product is not needed for backward); masked words get exactly zero weight, and
            # their own attention rows are meaningless (aggregators ignore them)
            sim = sim.masked_fill_(~word_mask.bool().reshape(-1, t, w, 1), torch.finfo(sim.dtype).min)
        attn = torch.softmax(torch.softmax(sim, dim=2) / temperature, dim=-1)
    context = torch.bmm(attn.reshape(n_img, t * w, n_reg), regions).reshape(n_img, t, w, dim)
    if normalize_context:
        context = F.normalize(context, dim=-1, eps=NORM_EPS)
    return context, attn


def attend(
    words: Tensor,
    regions: Tensor,
    temperature: float = DEFAULT_ATTN_TEMPERATURE,
    mode: AttentionMode = "softmax",
    word_mask: Tensor | None = None,
    normalize_context: bool = True,
    scale: float | Tensor = 1.0,
) -> tuple[Tensor, Tensor]:
    """Attend every word of every report over every image's regions.

    Args:
        words: ``[T, W, d]`` word features of ``T`` reports (padded to ``W`` words).
        regions: ``[I, R, d]`` region features of ``I`` images.
        temperature: softmax mode: ``tau_a``; gloria mode: ``1 / temp1`` (see the module docstring).
        mode: ``"softmax"`` or ``"gloria"``.
        word_mask: ``[T, W]`` valid words; only the gloria mode needs it (its first softmax runs over words).
            Masked words still get a (meaningless) context; aggregators ignore them.
        normalize_context: L2-normalise ``c_w`` (DESIGN §1).
        scale: gloria mode: multiplies the word-region dot products before the softmax over words
            (the model passes its learned ``match_scale``; 1 = GLoRIA's rule on the features as given).

    Returns:
        ``(context[I, T, W, d], attention[I, T, W, R])``.
    """
    _check(mode, temperature)
    if words.dim() != 3 or regions.dim() != 3:
        raise ValueError(
            f"attend expects words [T, W, d] and regions [I, R, d]; got {tuple(words.shape)}, {tuple(regions.shape)}"
        )
    mask = None if word_mask is None else word_mask.unsqueeze(0)
    context, attention = _attend_grouped(words.unsqueeze(0), regions, temperature, mode, mask, normalize_context,
                                         scale)
    assert attention is not None  # need_attention=True
    return context, attention


def attend_paired(
    words: Tensor,
    regions: Tensor,
    temperature: float = DEFAULT_ATTN_TEMPERATURE,
    mode: AttentionMode = "softmax",
    word_mask: Tensor | None = None,
    region_mask: Tensor | None = None,
    normalize_context: bool = True,
    scale: float | Tensor = 1.0,
    position: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Attention within each pair only (the diagonal of ``attend``): ``words[B, W, d]``, ``regions[B, R, d]``.
    ``position[B, W, R]``: region position logits (softmax mode; see ``_attend_grouped``).

    Returns ``(context[B, W, d], attention[B, W, R])``. For per-pair uses: MGCA's token loss,
    explanations. ``region_mask[B, R]`` masks the *keys*, so the same function runs MGCA's mirror
    direction (patches attending over words): ``attend_paired(patches, words, region_mask=word_mask)``.
    """
    _check(mode, temperature)
    if (
        words.dim() != 3
        or regions.dim() != 3
        or words.shape[0] != regions.shape[0]
        or words.shape[2] != regions.shape[2]
    ):
        raise ValueError(
            f"attend_paired expects words [B, W, d] and regions [B, R, d]; got {tuple(words.shape)}, "
            f"{tuple(regions.shape)}"
        )
    sim = torch.bmm(words, regions.transpose(1, 2))  # [B, W, R]
    if mode == "gloria":
        sim = sim * scale
        over_words = (
            torch.softmax(sim, dim=1)
            if word_mask is None
            else masked_softmax(sim, word_mask.bool().unsqueeze(-1), dim=1)
        )
        logits = over_words / temperature
    else:
        logits = sim / temperature
    if position is not None:
        if mode != "softmax":
            raise ValueError("region position logits need the softmax attention mode")
        logits = logits + position
    if region_mask is None:
        attn = torch.softmax(logits, dim=-1)
    else:
        attn = masked_softmax(logits, region_mask.bool().unsqueeze(1), dim=-1)
    context = torch.bmm(attn, regions)
    if normalize_context:
        context = F.normalize(context, dim=-1, eps=NORM_EPS)
    return context, attn


def _concat_outputs(outs: list[AggregateOutput]) -> AggregateOutput:
    def cat(items: list[Tensor | None]) -> Tensor | None:
        return None if any(x is None for x in items) else torch.cat(items, dim=0)  # type: ignore[arg-type]

    return AggregateOutput(
        score=torch.cat([o.score for o in outs], dim=0),
        node_weights=cat([o.node_weights for o in outs]),
        relations=cat([o.relations for o in outs]),
        global_node=outs[0].global_node,
        head_relations=cat([o.head_relations for o in outs]),
    )


def _chunk_fn(
    aggregator: Aggregator,
    temperature: float,
    mode: str,
    shared: bool,
    keep_extras: bool,
) -> Callable[..., tuple[Tensor, ...]]:
    """The per-chunk computation, as a function of tensors only (so it can be checkpointed)."""

    def run(
        words: Tensor,
        word_mask: Tensor,
        sentence_ids: Tensor,
        regions: Tensor,
        img_global: Tensor,
        txt_global: Tensor,
        scale: Tensor,
        position: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        grouped = words.unsqueeze(0) if shared else words
        gmask = word_mask.unsqueeze(0) if shared else word_mask
        gpos = None if position is None else (position.unsqueeze(0) if shared else position)
        need = aggregator.needs_attention
        context, attn = _attend_grouped(
            grouped, regions, temperature, mode, gmask, True, scale, need_attention=need, position=gpos
        )
        out = aggregator(
            words, context, word_mask, sentence_ids, img_global, txt_global, extras=keep_extras, attention=attn
        )
        if not keep_extras:
            return (out.score,)
        extras = [x for x in (out.node_weights, out.relations, out.head_relations) if x is not None]
        return (out.score, *extras)

    return run


def _pairwise(
    words: Tensor,
    word_mask: Tensor,
    sentence_ids: Tensor,
    regions: Tensor,
    img_global: Tensor,
    txt_global: Tensor,
    aggregator: Aggregator,
    temperature: float,
    mode: str,
    chunk_size: int,
    pairs: Tensor | None,
    checkpoint: bool,
    keep_extras: bool,
    scale: float | Tensor = 1.0,
    position: Tensor | None = None,
) -> AggregateOutput:
    _check(mode, temperature)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n_txt, n_words, dim = words.shape
    n_img = regions.shape[0]
    if word_mask.shape != (n_txt, n_words) or sentence_ids.shape != (n_txt, n_words):
        raise ValueError(
            f"word_mask and sentence_ids must be [T, W] = {(n_txt, n_words)}; got "
            f"{tuple(word_mask.shape)}, {tuple(sentence_ids.shape)}"
        )
    if img_global.shape != (n_img, dim) or txt_global.shape != (n_txt, dim):
        raise ValueError(
            f"img_global must be [I, d] = {(n_img, dim)} and txt_global [T, d] = {(n_txt, dim)}; got "
            f"{tuple(img_global.shape)}, {tuple(txt_global.shape)}"
        )
    if pairs is not None and (pairs.dim() != 2 or pairs.shape[0] != n_img):
        raise ValueError(f"pairs must be an index tensor [I, K] = [{n_img}, K]; got {tuple(pairs.shape)}")
    word_mask = word_mask.bool()
    # zero the padded words once ([T, W, d], small): their attention and context are then finite whatever
    # the padding held (inf, NaN), so no later op on the large [I, T, W, .] tensors needs to mask them again
    words = torch.where(word_mask.unsqueeze(-1), words, words.new_zeros(()))
    # a tensor argument (not a closure constant), so a learned scale gets its gradient through checkpointing
    scale_t = torch.as_tensor(scale, dtype=words.dtype, device=words.device)
    # a chunk returns a tuple (checkpoint-friendly); which extras it holds is told by the aggregator's flags
    run = _chunk_fn(aggregator, temperature, mode, pairs is None, keep_extras)
    outs: list[AggregateOutput] = []
    global_node = False
    for start in range(0, n_img, chunk_size):
        sl = slice(start, start + chunk_size)
        if pairs is None:
            args = (words, word_mask, sentence_ids, regions[sl], img_global[sl], txt_global, scale_t, position)
        else:
            idx = pairs[sl]
            args = (
                words[idx],
                word_mask[idx],
                sentence_ids[idx],
                regions[sl],
                img_global[sl],
                txt_global[idx],
                scale_t,
                None if position is None else position[idx],
            )
        if checkpoint and torch.is_grad_enabled():
            res = _checkpoint(run, *args, use_reentrant=False)
        else:
            res = run(*args)
        if keep_extras:
            nw = res[1] if aggregator.produces_node_weights else None
            k = 1 + int(aggregator.produces_node_weights)
            rel = res[k] if aggregator.produces_relations else None
            heads = res[k + 1] if aggregator.produces_relations else None
            global_node = aggregator.global_node
            outs.append(AggregateOutput(res[0], nw, rel, global_node, heads))
        else:
            outs.append(AggregateOutput(res[0]))
    if not outs:
        empty = words.new_zeros(0, n_txt if pairs is None else pairs.shape[1])
        return AggregateOutput(empty)
    return _concat_outputs(outs)


def pairwise_local_outputs(
    words: Tensor,
    word_mask: Tensor,
    sentence_ids: Tensor,
    regions: Tensor,
    img_global: Tensor,
    txt_global: Tensor,
    aggregator: Aggregator,
    *,
    temperature: float = DEFAULT_ATTN_TEMPERATURE,
    mode: AttentionMode = "softmax",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    pairs: Tensor | None = None,
    checkpoint: bool = False,
    keep_extras: bool = True,
    scale: float | Tensor = 1.0,
    position: Tensor | None = None,
) -> AggregateOutput:
    """The aggregated local matching of every image x report pair: ``score[I, T]`` (or ``[I, K]`` with
    ``pairs``) and, with ``keep_extras``, the aggregator's node weights and relations for every pair.

    Args:
        words, word_mask, sentence_ids: ``[T, W, d]``, ``[T, W]`` bool, ``[T, W]`` long (the reports).
        regions, img_global: ``[I, R, d]``, ``[I, d]`` (the images); ``txt_global``: ``[T, d]``.
        aggregator: pools each pair's matchings into a scalar (``reclf.align.aggregators``).
        temperature, mode, scale: the attention rule (``attend``).
        chunk_size: images per chunk; peak working memory ~ ``chunk_size * T * W * (R + d)`` floats
            (softmax mode: ``chunk_size * T * W * d`` plus the aggregator's, the attention is not stored).
        pairs: optional ``[I, K]`` indices of the reports to score for each image (RECLF's positive +
            top-k hardest negatives, see ``reclf.align.losses.topk_candidates``); the result is then ``[I, K]``.
        checkpoint: recompute each chunk in the backward pass (activation checkpointing), so that the
            memory held for backward is bounded by the chunk as well; costs one extra forward.
        keep_extras: also return node weights / relations (explanations); without them SRM can use a
            fused attention kernel.
        position: ``[T, W, R]`` region position logits of the reports' words (softmax mode), added to the
            attention of every image; ``region_position_logits`` builds them.
    """
    return _pairwise(
        words,
        word_mask,
        sentence_ids,
        regions,
        img_global,
        txt_global,
        aggregator,
        temperature,
        mode,
        chunk_size,
        pairs,
        checkpoint,
        keep_extras=keep_extras,
        scale=scale,
        position=position,
    )


def region_position_logits(words: Tensor, projection: Tensor, n_regions: int) -> Tensor:
    """``[..., W, R]`` logits of where each word looks by its meaning alone: ``(U e_w) · phi(r)``.

    ``phi(r)`` is the fixed 2-D Fourier encoding of region ``r``'s centre (``region_encoding`` of
    ``region_centres``: a row-major square grid) and ``U`` = ``projection[POSITION_DIM, d]`` is learned.
    Content attention alone (``e_w · v_r``) lets "left" find the left lung only if the region features
    happen to encode their position; with these logits a location word can look at its place whatever
    is there, and a finding word keeps looking by content (``U`` starts at 0: the plain matcher).
    """
    phi = region_encoding(region_centres(n_regions, words.device).to(words.dtype))
    return (words @ projection.t()) @ phi.t()


def sentence_membership(word_mask: Tensor, sentence_ids: Tensor, dtype: torch.dtype) -> Tensor:
    """``[T, W, K]``: 1 where word ``w`` is a valid word of sentence ``k`` (``K`` = the batch's largest sentence
    count, at least 1; masked words and words without a sentence belong to none)."""
    valid = word_mask.bool() & (sentence_ids >= 0)
    n_sent = int(sentence_ids[valid].max().item()) + 1 if bool(valid.any()) else 1
    return F.one_hot(sentence_ids.clamp_min(0), n_sent).to(dtype) * valid.unsqueeze(-1)


def append_phrase_nodes(words: Tensor, word_mask: Tensor, sentence_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Append one node per sentence to each report: ``(words[T, W + K, d], mask[T, W + K], ids[T, W + K])``.

    A phrase node is the L2-normalised sum of its sentence's valid word vectors (``K`` = the largest number
    of sentences in the batch; a report's missing sentences are masked). It is matched like a word, so it
    attends over the regions with *one* softmax: its logits add what the sentence names and where it says
    it is, and peak only where both hold. Single words cannot tell "effusion left, nodule right" from the
    same report with the sides swapped (each word finds its own place either way); a phrase can. The
    phrase nodes carry their sentence's id, so sentence-aware edges link them to their words. Word nodes
    keep their positions ``0 .. W-1``: explanations cut to the words are unchanged.
    """
    member = sentence_membership(word_mask, sentence_ids, words.dtype)  # [T, W, K]
    present = member.sum(1) > 0  # [T, K]
    if not bool(present.any()):
        return words, word_mask, sentence_ids
    phrases = F.normalize(member.transpose(1, 2) @ words, dim=-1, eps=NORM_EPS)  # [T, K, d]
    ids = torch.arange(present.shape[1], device=sentence_ids.device).expand_as(present)
    return (
        torch.cat([words, phrases], dim=1),
        torch.cat([word_mask.bool(), present], dim=1),
        torch.cat([sentence_ids, torch.where(present, ids, torch.full_like(ids, -1))], dim=1),
    )


POSITION_DIM = REGION_ENCODING_DIM


def normalized_entropy(attention: Tensor, eps: float = 1e-12) -> Tensor:
    """Entropy of each attention row over its last axis divided by ``log(R)``: 1 = uniform, 0 = one region.

    ``attention[..., R]`` (rows summing to 1) -> ``[...]``. The measure of how flat a word's map is,
    comparable across region grids (docs/methods.md).
    """
    n = attention.shape[-1]
    if n < 2:
        return attention.new_zeros(attention.shape[:-1])
    a = attention.clamp_min(0)
    return -(a * (a + eps).log()).sum(-1) / math.log(n)


def pairwise_local_scores(*args: Any, **kwargs: Any) -> Tensor:
    """Local score of every image x report pair, ``[I, T]`` (or ``[I, K]`` with ``pairs``): the score of
    ``pairwise_local_outputs`` (same arguments) without the extras."""
    return pairwise_local_outputs(*args, keep_extras=False, **kwargs).score


__all__ = [
    "ATTENTION_MODES",
    "DEFAULT_ATTN_TEMPERATURE",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MATCH_SCALE",
    "GLORIA_ATTN_TEMPERATURE",
    "GLORIA_TEMP1",
    "attend",
    "append_phrase_nodes",
    "attend_paired",
    "normalized_entropy",
    "region_position_logits",
    "sentence_membership",
    "POSITION_DIM",
    "pairwise_local_outputs",
    "pairwise_local_scores",
]
