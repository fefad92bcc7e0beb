"""Typed outputs shared by encoders, methods and evaluation.

Two layers:
- *raw* encoder outputs (``ImageEncoderOutput``, ``TextEncoderOutput``): backbone features before
  projection to the joint space, in the backbone's own width;
- *joint-space* features (``ImageFeatures``, ``TextFeatures``): after projection, L2-normalised;
  these are what ``model.encode_image`` / ``model.encode_text`` return and what evaluation uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class ImageEncoderOutput:
    """Backbone output: a pooled global vector and a local feature grid."""

    global_: Tensor  # [B, C_global]
    local: Tensor  # [B, C_local, h, w] (ViT: patch tokens reshaped to the patch grid)
    cls_attention: Tensor | None = None  # [B, h*w] CLS->patch attention (ViT), for MGCA's patch weights


@dataclass
class TextEncoderOutput:
    """Backbone output at word level (WordPiece pieces merged into words)."""

    global_: Tensor  # [B, H] ([CLS] of the last layer(s))
    words: Tensor  # [B, W, H]
    word_mask: Tensor  # bool [B, W]: real words (no [CLS]/[SEP]/padding/punctuation)
    sentence_ids: Tensor  # long [B, W]: sentence index of each word, -1 where masked
    word_strings: list[list[str]]  # the words, len(word_strings[b]) == word_mask[b].sum()
    cls_attention: Tensor | None = None  # [B, W] last-layer [CLS]->word attention (MGCA's word weights)


@dataclass
class ImageFeatures:
    """Image features in the joint space, L2-normalised along the last dimension."""

    global_: Tensor  # [B, d]
    local: Tensor  # [B, R, d], R = H*W
    grid: tuple[int, int]  # (H, W) of the region grid
    patch_weights: Tensor | None = None  # [B, R], optional (ViT CLS attention)

    def __len__(self) -> int:
        return self.global_.shape[0]

    def index(self, idx: slice | Tensor) -> ImageFeatures:
        pw = None if self.patch_weights is None else self.patch_weights[idx]
        return ImageFeatures(self.global_[idx], self.local[idx], self.grid, pw)


@dataclass
class TextFeatures:
    """Report features in the joint space, L2-normalised along the last dimension."""

    global_: Tensor  # [B, d]
    words: Tensor  # [B, W, d]
    word_mask: Tensor  # bool [B, W]
    sentence_ids: Tensor  # long [B, W]
    word_strings: list[list[str]] = field(default_factory=list)
    word_weights: Tensor | None = None  # [B, W], e.g. MGCA's [CLS]-attention weights
    claims: Tensor | None = None  # [B, K, d] one unit vector per sentence (method.claim_weight), zeros if absent

    def __len__(self) -> int:
        return self.global_.shape[0]

    def index(self, idx: slice | Tensor) -> TextFeatures:
        if isinstance(idx, slice):
            strings = self.word_strings[idx]
        else:
            strings = [self.word_strings[int(i)] for i in idx] if self.word_strings else []
        ww = None if self.word_weights is None else self.word_weights[idx]
        claims = None if self.claims is None else self.claims[idx]
        return TextFeatures(
            self.global_[idx], self.words[idx], self.word_mask[idx], self.sentence_ids[idx], strings, ww, claims
        )
