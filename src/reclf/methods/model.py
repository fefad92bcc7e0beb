"""``VLModel``: a vision-language model composed from shared parts.

The same class is ConVIRT, GLoRIA, MGCA, RECLF and the ablations — which parts are present and how
they are tuned is decided by ``MethodParams`` (``reclf.methods.params``):

- encoders: ``reclf.models.image.build_image_encoder`` and ``reclf.models.text.build_text_encoder``;
- projections to the joint space (global always; local when a matcher or MGCA's token loss needs it);
- a global InfoNCE on cosines (every method);
- a local matcher + aggregator over all image x report pairs and an InfoNCE on their scores
  (GLoRIA: double-softmax attention + log-sum-exp; RECLF: softmax attention + SRM/IRM);
- MGCA's token-level intra-pair loss and prototype loss.

Distributed training: ``loss(batch, gather)`` takes an all-gather with autograd; the global
embeddings are gathered so every rank computes the loss of the *global* batch (open_clip's
``gather_with_grad``); DDP's gradient averaging then yields the exact full-batch gradient. The local
matcher uses the rank's own batch unless ``gather_local`` is set on the call (then words and regions
are gathered too, padded to a fixed number of words: memory grows with world size squared).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import reclf.methods.inference as inference
from reclf.align.aggregators import Aggregator, PoolAggregator, build_aggregator
from reclf.align.losses import (
    Temperature,
    global_contrastive_loss,
    local_contrastive_loss,
    mgca_token_loss,
    topk_candidates,
)
from reclf.align.matching import (
    POSITION_DIM,
    AttentionMode,
    append_phrase_nodes,
    attend_paired,
    pairwise_local_outputs,
    pairwise_local_scores,
    region_position_logits,
    sentence_membership,
)
from reclf.align.prototypes import PrototypeLoss
from reclf.config import ImageEncoderConfig, TextEncoderConfig
from reclf.data.reports import names_both_sides, swap_laterality
from reclf.data.tokenization import WordTokens
from reclf.methods.interface import PairExplanations
from reclf.methods.params import MethodParams
from reclf.models.features import ImageFeatures, TextFeatures
from reclf.models.image import build_image_encoder
from reclf.models.projection import GlobalProjection, LocalProjection, ProjectionKind
from reclf.models.text import TextEncoder, build_text_encoder

Gather = Callable[[Tensor], Tensor]


# GLoRIA's inference pooling (``method.local_inference: max``): parameter-free, shared by every model
_MAX_POOL = PoolAggregator("max")


@dataclass
class Explanation:
    """Why an image and a report match: which regions each word looked at and which words mattered."""

    words: list[str]
    attention: Tensor | None  # [W, h, w] word -> region attention maps (methods with local features)
    grid: tuple[int, int]
    word_weights: Tensor | None  # [W] importance of each word's matching (IRM beta, LSE softmax, ...)
    relations: Tensor | None  # [N, N] SRM attention between matchings; node 0 = global when present
    global_node: bool
    global_score: float
    local_score: float | None


@dataclass
class Twins:
    """Each report of a batch with its places swapped (``method.binding_negatives``): the encoded twins, which of
    them differ from their report (``changed``), and which of those the binding term scores (``scored``)."""

    text: TextFeatures
    changed: Tensor
    scored: Tensor


class VLModel(nn.Module):
    """An image encoder, a text encoder and the alignment parts of one method."""

    def __init__(
        self,
        params: MethodParams,
        image_cfg: ImageEncoderConfig,
        text_cfg: TextEncoderConfig,
        text_encoder: TextEncoder | None = None,
    ) -> None:
        super().__init__()
        self.params, self.image_cfg, self.text_cfg = params, image_cfg, text_cfg
        d = params.embed_dim
        self.image_encoder = build_image_encoder(image_cfg)
        self.text_encoder = text_encoder or build_text_encoder(text_cfg, need_attention=params.token_weight > 0)
        kind: ProjectionKind = "mlp" if params.projection == "mlp" else "linear"  # checked by method_params
        hidden = params.projection_hidden
        self.image_global = GlobalProjection(self.image_encoder.global_dim, d, kind, hidden)
        self.text_global = GlobalProjection(self.text_encoder.hidden_size, d, kind, hidden)
        if params.sentence_global:  # one MLP per sentence (a non-linear head: a linear one would pool a bag again)
            self.sentence_global = LocalProjection(self.text_encoder.hidden_size, d, "mlp", hidden)
        if params.claim_weight > 0:  # the sentence-claim head: training only, unused at inference
            self.claim_head = LocalProjection(self.text_encoder.hidden_size, d, "mlp", hidden)
        if params.needs_local_features:
            self.image_local = LocalProjection(self.image_encoder.local_dim, d, kind, hidden)
            self.text_local = LocalProjection(self.text_encoder.hidden_size, d, kind, hidden)
        self.global_tau = Temperature(params.global_temperature, learnable=params.learn_temperature)
        if params.has_local:
            self.aggregator = build_aggregator(
                params.aggregator,
                d,
                gamma=params.lse_gamma,
                d_z=params.d_z,
                global_node=params.global_node,
                layers=params.srm_layers,
                heads=params.srm_heads,
                topk=params.srm_topk,
                sentence_edges=params.sentence_edges,
                prenorm=params.srm_prenorm,
                structure_edges=params.structure_edges,
                grounding_edges=params.grounding_edges,
                grounding_values=params.grounding_values,
                cross_values=params.cross_values,
                node_where=params.node_where,
                irm_text_prior=params.irm_text_prior,
                irm_cos_prior=params.irm_cos_prior,
                irm_before_srm=params.irm_before_srm,
            )
            self.local_tau = Temperature(params.local_temperature, learnable=params.learn_temperature)
            if params.region_positions:  # U in (U e_w) . phi(r); 0 at the start: the plain matcher
                self.region_position = nn.Parameter(torch.zeros(POSITION_DIM, d))
            if params.match_mode == "gloria":
                # the scale of the cosines before GLoRIA's softmax over words, stored as a temperature 1/scale
                self.match_scale = Temperature(
                    1.0 / params.match_scale, learnable=params.learn_match_scale, min_tau=0.01, max_tau=1.0
                )
        if params.proto_weight > 0:
            self.prototypes = PrototypeLoss(
                d, params.num_prototypes, params.proto_temperature, params.sinkhorn_eps, params.sinkhorn_iters
            )

    # ------------------------------------------------------------------------------------------
    # identity

    @property
    def method(self) -> str:
        return self.params.name

    @property
    def has_local(self) -> bool:
        return self.params.has_local

    @property
    def embed_dim(self) -> int:
        return self.params.embed_dim

    @property
    def tokenizer(self):
        """The word tokenizer (use it in collate functions: the same rule in training and inference)."""
        return self.text_encoder.tokenizer

    @property
    def config(self) -> dict[str, Any]:
        """A JSON-able description that rebuilds this model (see ``save_pretrained``)."""
        from reclf.config import to_dict
        from reclf.methods.params import params_dict

        return {
            "method": params_dict(self.params),
            "image_encoder": to_dict(self.image_cfg),
            "text_encoder": to_dict(self.text_cfg),
        }

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------------------------------
    # encoding

    def encode_image(self, images: Tensor) -> ImageFeatures:
        """``images[B, C, H, W]`` in ``[0, 1]`` -> joint-space global and region features."""
        out = self.image_encoder(images.to(self.device))
        g = self.image_global(out.global_)
        h, w = out.local.shape[-2:]
        if self.params.needs_local_features:
            local = self.image_local(out.local)
        else:  # no local projection (ConVIRT): raw regions, normalised, for inspection only
            local = F.normalize(out.local.flatten(2).transpose(1, 2), dim=-1)
        return ImageFeatures(g, local, (int(h), int(w)), out.cls_attention)

    def encode_text(self, reports: list[str] | str | WordTokens) -> TextFeatures:
        """Reports (strings or tokens from ``model.tokenizer``) -> joint-space global and word features."""
        tokens = reports if isinstance(reports, WordTokens) else self.tokenizer(reports)
        need_attn = self.params.token_weight > 0 and self.training
        out = self.text_encoder(tokens.to(self.device), need_cls_attention=need_attn)
        if self.params.sentence_global:
            g = F.normalize(
                sentence_vectors(out.words, out.word_mask, out.sentence_ids, self.sentence_global).sum(1),
                dim=-1,
                eps=1e-8,
            )
        else:
            g = self.text_global(out.global_)
        if self.params.needs_local_features:
            words = self.text_local(out.words, out.word_mask)
        else:
            words = F.normalize(out.words, dim=-1) * out.word_mask.unsqueeze(-1)
        claims = None
        if self.params.claim_weight > 0:
            claims = sentence_vectors(out.words, out.word_mask, out.sentence_ids, self.claim_head)
        return TextFeatures(g, words, out.word_mask, out.sentence_ids, out.word_strings, out.cls_attention, claims)

    # ------------------------------------------------------------------------------------------
    # inference on files (``reclf.methods.inference``: the code ``reclf embed`` / ``classify`` / ``evaluate`` run)

    def preprocess(self, path: str | Path) -> Tensor:
        """An image file (PNG, JPEG, DICOM) as this model sees it: ``[1, S, S]`` in [0, 1] (the eval transform)."""
        return inference.preprocess(self, path)

    def embed_images(self, paths: Any, batch_size: int = 32, local: bool = False) -> inference.Embeddings:
        """Global (and with ``local``, region) embeddings of image files; unreadable ones are listed, not fatal."""
        return inference.embed_images(self, paths, batch_size, local=local)

    def zero_shot(self, images: Any, class_prompts: dict[str, Any], reduce: str = "mean") -> inference.ZeroShotScores:
        """Zero-shot class scores of images (files or a ``[B, 1, S, S]`` batch) for ``{class: prompts}``."""
        return inference.zero_shot(self, images, class_prompts, reduce)

    # ------------------------------------------------------------------------------------------
    # scores

    def global_similarity(self, img: ImageFeatures, txt: TextFeatures) -> Tensor:
        """Cosine of the global embeddings: ``[n_img, n_txt]``."""
        return img.global_ @ txt.global_.t()

    def _local(
        self,
        img: ImageFeatures,
        txt: TextFeatures,
        pairs: Tensor | None = None,
        extras: bool = False,
        aggregator: Aggregator | None = None,
    ):
        if not self.has_local:
            raise ValueError(f"method {self.method!r} has no local matcher; use global_similarity")
        p = self.params
        fn = pairwise_local_outputs if extras else pairwise_local_scores
        words, word_mask, sentence_ids = txt.words, txt.word_mask, txt.sentence_ids
        if p.phrase_nodes:
            words, word_mask, sentence_ids = append_phrase_nodes(words, word_mask, sentence_ids)
        return fn(
            words,
            word_mask,
            sentence_ids,
            img.local,
            img.global_,
            txt.global_,
            aggregator if aggregator is not None else self.aggregator,
            temperature=p.match_temperature,
            mode=_match_mode(p),
            chunk_size=p.chunk_size,
            pairs=pairs,
            checkpoint=p.checkpoint_chunks and self.training,
            scale=self._match_scale(),
            position=self._position_logits(words, img.local.shape[1]),
        )

    def _position_logits(self, words: Tensor, n_regions: int) -> Tensor | None:
        """``[..., W, R]``: where each word looks by its meaning (``method.region_positions``), or None."""
        if not self.params.region_positions:
            return None
        return region_position_logits(words, self.region_position, n_regions)

    def _match_scale(self) -> Tensor | float:
        """The gloria mode's scale of the cosines (learned); 1 for the softmax mode (its temperature rules)."""
        scale = getattr(self, "match_scale", None)
        return 1.0 if scale is None else scale.scale

    def word_region_attention(self, img: ImageFeatures, txt: TextFeatures) -> Tensor:
        """Each report's word -> region attention over *its own* image: ``[B, W, R]`` (pairs ``i`` with ``i``).

        The rule is the method's own: its local matcher (softmax or GLoRIA's double softmax with the learned
        scale), or MGCA's token-level attention (softmax at ``token_temperature``). Rows of masked words are
        meaningless; ``txt.word_mask`` tells which are valid. Methods without local features raise.
        """
        p = self.params
        if not p.needs_local_features:
            raise ValueError(f"method {self.method!r} has no word-region attention (no local features)")
        mode: AttentionMode = _match_mode(p) if p.has_local else "softmax"
        temp = p.match_temperature if p.has_local else p.token_temperature
        scale = self._match_scale() if p.has_local else 1.0
        position = self._position_logits(txt.words, img.local.shape[1]) if p.has_local else None
        _, attn = attend_paired(
            txt.words, img.local, temp, mode, word_mask=txt.word_mask, scale=scale, position=position
        )
        return attn

    def local_similarity(self, img: ImageFeatures, txt: TextFeatures) -> Tensor:
        """The word-region score of every image x report pair at inference: ``[n_img, n_txt]``.

        ``method.local_inference``: ``aggregator`` pools the words as in training; ``max`` takes the best
        matched word's ``cos(e_w, c_w)``, as GLoRIA's ``get_local_similarities`` does (its training
        log-sum-exp adds about ``log(#words) / gamma`` and so favours long prompts).
        """
        if self.params.local_inference == "max":
            return self._local(img, txt, aggregator=_MAX_POOL)
        return self._local(img, txt)

    def similarity(self, img: ImageFeatures, txt: TextFeatures) -> Tensor:
        """The score this method ranks with (zero-shot, retrieval, relations): ``[n_img, n_txt]``.

        ``fused`` is the mean of the two logits the method was trained with, ``cos(g, h) / tau_g`` and
        ``s_local / tau_l``. Each is defined for one pair at a time, so a pair's score never depends on
        which other images or reports are scored with it (chunking, batch composition, the number of
        candidates): an earlier version standardised per image over the candidate reports, which made
        report->image retrieval change with the chunk size. Ranking by the sum of the logits is ranking by
        the product of the two trained softmax posteriors.

        ``gloria`` is GLoRIA's own inference (``gloria.get_similarities``): ``(gamma * max_w cos(e_w, c_w) +
        cos(g, h)) / 2`` with ``gamma`` = temp2 = 5, i.e. the log of the max of ``exp(5 cos)`` averaged with
        the global cosine (``local_inference: max`` makes ``local_similarity`` the max over words).
        """
        mode = self.params.similarity
        if mode == "global":
            return self.global_similarity(img, txt)
        local = self.local_similarity(img, txt)
        if mode == "local":
            return local
        if mode == "gloria":
            return (self.params.lse_gamma * local + self.global_similarity(img, txt)) / 2
        return (self.global_tau(self.global_similarity(img, txt)) + self.local_tau(local)) / 2

    # ------------------------------------------------------------------------------------------
    # training

    def on_train_epoch_start(self, epoch: int) -> None:
        """MGCA keeps its prototypes frozen during the first epoch(s)."""
        if self.params.proto_weight > 0:
            self.prototypes.frozen = epoch < self.params.freeze_prototypes_epochs

    def loss(
        self, batch: dict[str, Any], gather: Gather | None = None, gather_local: bool = False
    ) -> dict[str, Tensor]:
        """Named loss terms and their weighted total ``"loss"``.

        ``batch``: ``{"images": [B, C, H, W], "tokens": WordTokens}`` (or ``"reports": list[str]``).
        ``gather``: all-gather with autograd across ranks (``None`` in a single process).
        """
        p = self.params
        tokens = batch.get("tokens")
        img = self.encode_image(batch["images"])
        txt = self.encode_text(tokens if tokens is not None else batch["reports"])
        terms: dict[str, Tensor] = {}
        swapped = self._binding_negative_texts(batch)
        g_img, g_txt = img.global_, txt.global_
        g_extra = None
        if swapped is not None and p.binding_global:
            # image i against its own report's twin (same words, places swapped), before any gathering
            changed = swapped.changed
            twin_cos = F.cosine_similarity(g_img, swapped.text.global_, dim=-1)
            g_extra = twin_cos.masked_fill(~changed, float("-inf")).unsqueeze(1)
        if gather is not None:
            g_img, g_txt = gather(g_img), gather(g_txt)
            g_extra = gather(g_extra) if g_extra is not None else None
        terms["global"] = global_contrastive_loss(
            g_img,
            g_txt,
            self.global_tau,
            i2t_weight=p.i2t_weight,
            sum_directions=p.sum_directions,
            extra_negatives=g_extra,
        )
        total = p.global_weight * terms["global"]
        if g_extra is not None and gather is None and bool(changed.any()):
            with torch.no_grad():  # the share of changed reports whose own report beats its twin globally
                own_cos = F.cosine_similarity(img.global_, txt.global_, dim=-1)
                terms["binding_global_acc"] = (own_cos[changed] > twin_cos[changed]).float().mean()
        if p.claim_weight > 0 and swapped is not None:
            terms.update(self._claim_loss(img.global_, txt, swapped.text))
            total = total + p.claim_weight * terms["claim"]
        if p.has_local:
            terms.update(self._local_loss(img, txt, gather if gather_local else None, swapped))
            total = total + p.local_weight * terms["local"]
            if "binding" in terms and p.binding_weight > 0:
                total = total + p.binding_weight * terms["binding"]
        if p.token_weight > 0:
            token = mgca_token_loss(
                txt.words,
                txt.word_mask,
                img.local,
                word_weights=txt.word_weights,
                patch_weights=img.patch_weights,
                tau=p.token_temperature,
            )
            terms["token"] = token["loss"]
            total = total + p.token_weight * terms["token"]
        if p.proto_weight > 0:
            if self.training and not self.prototypes.frozen:
                self.prototypes.renormalize_()
            terms["proto"] = self.prototypes(img.global_, txt.global_)
            total = total + p.proto_weight * terms["proto"]
        terms["loss"] = total
        with torch.no_grad():
            terms["global_tau"] = self.global_tau.tau.detach()
        return terms

    def _binding_negative_texts(self, batch: dict[str, Any]) -> Twins | None:
        """Each report with its sides (and zones) swapped, encoded, which of them differ from the original and
        which the binding term scores (``method.binding_negatives``, ``binding_term_on``; ``None`` when off)."""
        mode = self.params.binding_negatives
        if mode == "none":
            return None
        reports = batch.get("reports")
        if reports is None:
            raise ValueError("method.binding_negatives needs the report strings in the batch (batch['reports'])")
        swapped = [swap_laterality(r, zones=mode == "side+zone") for r in reports]
        changed = torch.tensor([a != b for a, b in zip(swapped, reports)], device=self.device)
        scored = changed
        if self.params.binding_term_on == "both-sides":
            scored = changed & torch.tensor([names_both_sides(r) for r in reports], device=self.device)
        return Twins(self.encode_text(swapped), changed, scored)

    def _claim_loss(self, g: Tensor, txt: TextFeatures, twin: TextFeatures) -> dict[str, Tensor]:
        """``claim``: each sentence the side swap changes, scored against the images by ``cos(g, u) / tau_g``
        with its claim vector ``u``, must pick its own image among the batch's (InfoNCE) and, on its own
        image, beat its twin sentence (``softplus(s_twin - s_own)``); the two averaged. ``claim_acc``: the
        share of those sentences that beat their twin (no gradient). Within a rank's batch."""
        if txt.claims is None or twin.claims is None:
            raise ValueError("method.claim_weight: the text features carry no claim vectors")
        changed = changed_sentences(txt, twin, min(txt.claims.shape[1], twin.claims.shape[1]))  # [B, K]
        if not bool(changed.any()):
            return {"claim": g.new_zeros(())}
        b_idx, k_idx = changed.nonzero(as_tuple=True)
        own = txt.claims[b_idx, k_idx]  # [M, d]
        other = twin.claims[b_idx, k_idx]
        logits = self.global_tau(own @ g.t())  # [M, B]: sentence -> images
        own_score = logits.gather(1, b_idx.unsqueeze(1)).squeeze(1)
        twin_score = self.global_tau((other * g[b_idx]).sum(-1))
        loss = (F.cross_entropy(logits, b_idx) + F.softplus(twin_score - own_score).mean()) / 2
        with torch.no_grad():
            acc = (own_score > twin_score).float().mean()
        return {"claim": loss, "claim_acc": acc}

    def _local_loss(
        self,
        img: ImageFeatures,
        txt: TextFeatures,
        gather: Gather | None,
        swapped: Twins | None = None,
    ) -> dict[str, Tensor]:
        """``local``: the local InfoNCE; with binding negatives (single process) also ``binding``, the
        pairwise term ``-log sigmoid((s(i, T_i) - s(i, swap(T_i))) / tau_l)`` over the scored twins (those the
        swap changes, or only those naming both sides: ``binding_term_on``; the own report against its twin
        alone, not diluted by the batch's easy negatives), and ``binding_acc``, the share of them whose own report
        wins (no gradient)."""
        p = self.params
        extra = None
        if swapped is not None:
            # image i against its own report with the places swapped (same words, other binding), before
            # any gathering: a rank's own images and swapped reports
            own = torch.arange(len(swapped.text), device=swapped.changed.device).unsqueeze(1)
            extra = self._local(img, swapped.text, own).masked_fill(~swapped.changed.unsqueeze(1), float("-inf"))
        if gather is not None:
            img, txt = _gather_features(img, txt, gather, self.tokenizer.max_tokens)
            if extra is not None:
                extra = gather(extra)
        pairs = None
        if p.hard_negatives > 0:
            with torch.no_grad():
                pairs = topk_candidates(self.global_similarity(img, txt), p.hard_negatives)
        n = len(txt)
        # the local InfoNCE within groups of ``local_group`` consecutive pairs of the (shuffled) batch, or over
        # the whole batch; a group's loss counts by its size
        size = p.local_group if 0 < p.local_group < n else n
        losses, own_scores, irm_stds = [], [], []
        irm = getattr(self.aggregator, "irm", None)
        for start in range(0, n, size):
            group = slice(start, min(start + size, n))
            scores = self._local(img.index(group), txt.index(group), pairs)
            if irm is not None and irm.last_logit_std is not None:
                irm_stds.append(irm.last_logit_std)  # each group's pass: the diagnostic covers every pair
            own_scores.append(scores[:, 0] if pairs is not None else scores.diagonal())
            group_loss = local_contrastive_loss(
                scores,
                self.local_tau,
                pairs,
                n_txt=group.stop - group.start,
                i2t_weight=p.i2t_weight,
                sum_directions=p.sum_directions,
                extra_negatives=extra[group] if extra is not None else None,
            )
            losses.append(group_loss * (group.stop - group.start))
        terms: dict[str, Tensor] = {"local": torch.stack(losses).sum() / n}
        if irm_stds:
            terms["irm_logit_std"] = torch.stack(irm_stds).mean()
        if extra is not None and gather is None:
            assert swapped is not None
            scored = swapped.scored
            margin = self.local_tau(torch.cat(own_scores) - extra[:, 0])[scored]
            terms["binding"] = F.softplus(-margin).mean() if bool(scored.any()) else margin.new_zeros(())
            if bool(scored.any()):
                terms["binding_acc"] = (margin.detach() > 0).float().mean()
        return terms

    # ------------------------------------------------------------------------------------------
    # explanation

    @torch.no_grad()
    def explain(self, image: Tensor, report: str) -> Explanation:
        """Word -> region attention maps, importance of each word, SRM relations, for one pair."""
        if image.dim() == 3:
            image = image.unsqueeze(0)
        was_training = self.training
        self.eval()
        try:
            img = self.encode_image(image[:1])
            txt = self.encode_text([report])
            n_words = int(txt.word_mask[0].sum())
            words = txt.word_strings[0] if txt.word_strings else [str(i) for i in range(n_words)]
            global_score = float(self.global_similarity(img, txt)[0, 0])
            attention = None
            if self.params.needs_local_features:
                attn = self.word_region_attention(img, txt)
                valid = txt.word_mask[0]
                attention = attn[0][valid].reshape(n_words, *img.grid).cpu()
            word_weights = relations = None
            local_score = None
            global_node = False
            if self.has_local:
                out = self._local(img, txt, extras=True)
                local_score = float(out.score[0, 0])
                global_node = bool(out.global_node)
                node_valid = txt.word_mask[0]
                if global_node:
                    node_valid = torch.cat([node_valid.new_ones(1), node_valid])
                n_nodes = out.node_weights.shape[-1] if out.node_weights is not None else len(node_valid)
                node_valid = F.pad(node_valid, (0, n_nodes - len(node_valid)))  # phrase nodes: words only
                if out.node_weights is not None:
                    w = out.node_weights[0, 0][node_valid]
                    word_weights = (w[1:] if global_node else w).cpu()
                if out.relations is not None:
                    rel = out.relations[0, 0]
                    relations = rel[node_valid][:, node_valid].cpu()
        finally:
            self.train(was_training)
        return Explanation(words, attention, img.grid, word_weights, relations, global_node, global_score, local_score)

    @torch.no_grad()
    def explain_pairs(self, images: Tensor, reports: list[str]) -> PairExplanations:
        """Per pair ``images[i]``-``reports[i]``: words, pieces per word, word weights, relations and word ->
        region attention, each cut to the report's own words (see :class:`PairExplanations`).

        Word weights: the aggregator's node weights (IRM's beta, or the softmax its log-sum-exp pooling implies)
        with the global node dropped and renormalised over the words; MGCA (no local matcher, a token loss): its
        last-layer [CLS] -> word attention, normalised. Relations: SRM's (head mean, and per head of its last
        layer), global node dropped. Attention: :meth:`word_region_attention`. Only the pairs themselves are
        scored (``pairs = [[0], [1], ...]``), not every image with every report.
        """
        was_training = self.training
        self.eval()
        try:
            tokens = self.tokenizer(reports)
            img = self.encode_image(images)
            txt = self.encode_text(tokens)
            n = [int(k) for k in tokens.num_words.tolist()]
            b = len(reports)
            p2w = tokens.piece_to_word
            width = int(p2w.max().item()) + 2 if p2w.numel() else 1
            slot = torch.where(p2w >= 0, p2w, torch.full_like(p2w, width - 1))
            counts = torch.zeros(b, width, dtype=torch.long).scatter_add_(1, slot, torch.ones_like(slot))
            pieces = [counts[i, : n[i]] for i in range(b)]
            weights = relations = heads = attention = None
            if self.has_local:
                pairs = torch.arange(b, device=img.global_.device)[:, None]
                out = self._local(img, txt, pairs, extras=True)
                off = 1 if out.global_node else 0
                if out.node_weights is not None:
                    nw = out.node_weights[:, 0].float().cpu()
                    weights = [_normalised(nw[i, off : off + n[i]]) for i in range(b)]
                if out.relations is not None:
                    rel = out.relations[:, 0].float().cpu()
                    relations = [rel[i, off : off + n[i], off : off + n[i]] for i in range(b)]
                if out.head_relations is not None:
                    hr = out.head_relations[:, 0].float().cpu()  # [B, H, N, N]
                    heads = [hr[i, :, off : off + n[i], off : off + n[i]] for i in range(b)]
            elif self.params.token_weight > 0:  # MGCA: the [CLS] -> word attention its token loss weighs words by
                enc = self.text_encoder(tokens.to(self.device), need_cls_attention=True)
                cls = enc.cls_attention.float().cpu()
                weights = [_normalised(cls[i, : n[i]]) for i in range(b)]
            if self.params.needs_local_features:
                attn = self.word_region_attention(img, txt).float().cpu()  # [B, W, R]
                attention = [attn[i, : n[i]] for i in range(b)]
        finally:
            self.train(was_training)
        return PairExplanations(tokens.words, pieces, img.grid, weights, relations, heads, attention)

    # ------------------------------------------------------------------------------------------
    # saving

    def save_pretrained(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write this model as a folder ``from_pretrained`` reads (see :func:`reclf.methods.saving.save_pretrained`)."""
        from reclf.methods.saving import save_pretrained

        return save_pretrained(self, folder, overwrite=overwrite)


def _match_mode(p: MethodParams) -> AttentionMode:
    """``method.match_mode`` as the matcher's type (``method_params`` accepts softmax | gloria only)."""
    return "gloria" if p.match_mode == "gloria" else "softmax"


def sentence_vectors(words: Tensor, word_mask: Tensor, sentence_ids: Tensor, head: nn.Module) -> Tensor:
    """``head(mean of sentence k's valid word states)``: ``[B, W, C] -> [B, K, d]``, unit vectors; a sentence
    a report does not have is the zero vector. Their normalised sum is ``method.sentence_global``'s report
    vector; each alone is a claim of ``method.claim_weight``."""
    member = sentence_membership(word_mask, sentence_ids, words.dtype)  # [B, W, K]
    counts = member.sum(1)  # [B, K]
    means = (member.transpose(1, 2) @ words) / counts.clamp_min(1).unsqueeze(-1)
    return head(means, counts > 0)


def changed_sentences(txt: TextFeatures, twin: TextFeatures, k: int) -> Tensor:
    """bool ``[B, k]``: sentence ``k`` of report ``b`` has a word that differs in its twin (the word strings;
    the swap keeps every word's position and sentence)."""
    if len(txt.word_strings) != len(txt) or len(twin.word_strings) != len(twin):
        raise ValueError("method.claim_weight needs the word strings of both reports (TextFeatures.word_strings)")
    out = torch.zeros(len(txt), k, dtype=torch.bool, device=txt.words.device)
    for b, (own, other) in enumerate(zip(txt.word_strings, twin.word_strings)):
        ids = txt.sentence_ids[b][txt.word_mask[b]].tolist()
        for w, (a, c) in enumerate(zip(own, other)):
            if a != c and w < len(ids) and 0 <= ids[w] < k:
                out[b, ids[w]] = True
    return out


def _normalised(w: Tensor) -> Tensor:
    """``w / w.sum()`` (all zeros stay zeros)."""
    total = float(w.sum())
    return w / total if total > 0 else w


def _gather_features(img: ImageFeatures, txt: TextFeatures, gather: Gather, max_words: int):
    """Gather local features across ranks; words are padded to ``max_words`` so shapes agree."""
    pad = max_words - txt.words.shape[1]
    if pad < 0:
        raise ValueError(f"{txt.words.shape[1]} words exceed the padding width {max_words}")
    words = F.pad(txt.words, (0, 0, 0, pad))
    mask = F.pad(txt.word_mask, (0, pad), value=False)
    sid = F.pad(txt.sentence_ids, (0, pad), value=-1)
    img_all = ImageFeatures(gather(img.global_), gather(img.local), img.grid)
    txt_all = TextFeatures(gather(txt.global_), gather(words), gather(mask.float()) > 0.5, gather(sid.float()).long())
    return img_all, txt_all
