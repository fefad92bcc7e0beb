"""Reports -> words: WordPiece pieces, the piece -> word map, the valid-word mask and sentence ids.

This is the ONE place where text becomes model input, used identically in training and inference
(GLoRIA's train/inference mismatch in which positions count as words is the bug this prevents).

Rules, for every report:

- the report is cleaned with :func:`reclf.data.reports.clean_report` (idempotent, so already
  cleaned study text is unchanged and free-text prompts get the same treatment);
- a *word* is a pre-tokenizer word of the fast tokenizer (BERT: split on whitespace and on every
  punctuation character, so "2.5" is the words "2", ".", "5" and "left-sided" is "left", "-",
  "sided"); its WordPiece pieces are merged into one vector by :func:`merge_pieces`;
- a word is *valid* unless it has no letter or digit (punctuation, symbols, de-id underscores);
  ``[CLS]``, ``[SEP]`` and padding never belong to a word; invalid positions get
  ``piece_to_word == -1``;
- valid words are numbered 0..n-1 in reading order, so ``words`` and the masked rows line up;
- **truncation**: a report longer than ``max_tokens`` loses its tail pieces. A word cut in the
  middle is dropped (its remaining pieces are masked like punctuation: "atelectasis" cut after
  its first piece must not become the word "ate"); words entirely past the cut do not exist;
- the sentence id of a word is the index, in :func:`reclf.data.reports.split_sentences` of the
  cleaned report, of the sentence that contains the word's first character; -1 where masked;
- word strings are the word's text as the tokenizer sees it (its normalizer applied: lower-cased
  for uncased vocabularies), i.e. the pieces joined without ``##`` (an ``[UNK]`` piece keeps the
  original characters);
- padding never changes the words: a report tokenised alone or in a batch gives the same words,
  pieces and ids (only the padded width differs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from reclf.data.reports import clean_report, sentence_spans

_ALNUM = re.compile(r"[^\W_]")  # a letter or a digit (any script)


@dataclass
class WordTokens:
    """A tokenised batch of reports at piece and word level (see the module doc for the rules)."""

    input_ids: Tensor  # long [B, T]
    attention_mask: Tensor  # long [B, T]
    piece_to_word: Tensor  # long [B, T]: word index of each piece; -1 for [CLS]/[SEP]/pad/punctuation
    word_mask: Tensor  # bool [B, W]: real words
    sentence_ids: Tensor  # long [B, W]: sentence index of each word, -1 where masked
    words: list[list[str]] = field(default_factory=list)  # len(words[b]) == word_mask[b].sum()

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_words(self) -> Tensor:
        """long [B]: the number of valid words per report."""
        return self.word_mask.sum(dim=1)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> WordTokens:
        """The same tokens on ``device`` (the word strings stay on the host)."""
        return WordTokens(
            self.input_ids.to(device, non_blocking=non_blocking),
            self.attention_mask.to(device, non_blocking=non_blocking),
            self.piece_to_word.to(device, non_blocking=non_blocking),
            self.word_mask.to(device, non_blocking=non_blocking),
            self.sentence_ids.to(device, non_blocking=non_blocking),
            self.words,
        )

    def index(self, idx: int | slice | Tensor | list[int]) -> WordTokens:
        """A sub-batch (rows ``idx``); the padded widths T and W are kept."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        if isinstance(idx, slice):
            words = self.words[idx]
        else:
            rows = torch.as_tensor(idx)
            if rows.dtype == torch.bool:
                rows = rows.nonzero().flatten()
            idx = rows.to(self.input_ids.device)
            words = [self.words[int(i)] for i in rows.tolist()]
        return WordTokens(
            self.input_ids[idx],
            self.attention_mask[idx],
            self.piece_to_word[idx],
            self.word_mask[idx],
            self.sentence_ids[idx],
            words,
        )

    __getitem__ = index

    def trim(self) -> WordTokens:
        """Drop trailing columns that are padding in every row (after :meth:`index` of a sub-batch)."""
        t = int(self.attention_mask.sum(dim=1).max().item()) if len(self) else 0
        w = max(1, int(self.num_words.max().item())) if len(self) else 1
        return WordTokens(
            self.input_ids[:, :t],
            self.attention_mask[:, :t],
            self.piece_to_word[:, :t],
            self.word_mask[:, :w],
            self.sentence_ids[:, :w],
            self.words,
        )


def merge_pieces(hidden: Tensor, piece_to_word: Tensor, n_words: int, mode: str = "sum") -> Tensor:
    """Merge piece vectors into word vectors: ``hidden[B,T,H]`` -> ``[B, n_words, H]``.

    One scatter-add over all pieces (no Python loop). Pieces with ``piece_to_word == -1`` go to a
    spill slot that is dropped. ``mode="sum"`` adds the pieces (GLoRIA, MGCA); ``"mean"`` divides
    by the number of pieces. Words without pieces (padding rows) are zero. Works for any trailing
    shape of ``hidden`` beyond [B, T] being a single H dimension, and for ``hidden[B,T]`` (e.g.
    attention weights), which gives ``[B, n_words]``.
    """
    if mode not in ("sum", "mean"):
        raise ValueError(f"word_merge mode must be 'sum' or 'mean', got {mode!r}")
    squeeze = hidden.dim() == 2
    if squeeze:
        hidden = hidden.unsqueeze(-1)
    if hidden.shape[:2] != piece_to_word.shape:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and piece_to_word {tuple(piece_to_word.shape)} disagree on [B, T]"
        )
    b, _, h = hidden.shape
    index = piece_to_word.long().clone()
    index[(index < 0) | (index >= n_words)] = n_words  # spill slot
    out = hidden.new_zeros(b, n_words + 1, h)
    out = out.scatter_add(1, index.unsqueeze(-1).expand(-1, -1, h), hidden)[:, :n_words]
    if mode == "mean":
        counts = torch.zeros(b, n_words + 1, dtype=hidden.dtype, device=hidden.device)
        counts = counts.scatter_add(1, index, torch.ones_like(index, dtype=hidden.dtype))[:, :n_words]
        out = out / counts.clamp(min=1).unsqueeze(-1)
    return out.squeeze(-1) if squeeze else out


@runtime_checkable
class Tokenizer(Protocol):
    """What a collate function needs of a model's tokenizer: reports in, a batch of tokens out.

    ``WordTokenizer`` is the one every ``reclf.methods`` model has (it returns ``WordTokens``); test
    stubs return a mapping of tensors. ``max_tokens`` bounds the pieces per report.
    """

    max_tokens: int

    def __call__(self, reports: list[str]) -> Any: ...


class WordTokenizer:
    """Wraps a Hugging Face *fast* tokenizer; ``__call__(reports) -> WordTokens``.

    ``max_tokens`` bounds the pieces per report including ``[CLS]`` and ``[SEP]``. ``clean``
    applies :func:`clean_report` first (idempotent; keep it on so training and inference agree).
    """

    def __init__(self, hf_tokenizer: Any, max_tokens: int = 128, clean: bool = True) -> None:
        if not getattr(hf_tokenizer, "is_fast", False):
            raise TypeError(
                "WordTokenizer needs a fast (Rust) tokenizer for word ids and offsets, "
                f"got {type(hf_tokenizer).__name__}; "
                "load it with AutoTokenizer.from_pretrained(..., use_fast=True) or from a folder with tokenizer.json"
            )
        if max_tokens < 3:
            raise ValueError(f"max_tokens must be >= 3 ([CLS], one piece, [SEP]), got {max_tokens}")
        # the contract puts [CLS] at position 0 and cuts the tail of long reports
        hf_tokenizer.padding_side = "right"
        hf_tokenizer.truncation_side = "right"
        self.hf_tokenizer = hf_tokenizer
        self.max_tokens = int(max_tokens)
        self.clean = clean
        backend = hf_tokenizer.backend_tokenizer
        self._normalizer = backend.normalizer

    @property
    def hf(self) -> Any:
        """Short alias of :attr:`hf_tokenizer` (the wrapped Hugging Face fast tokenizer)."""
        return self.hf_tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.hf_tokenizer)

    @property
    def pad_token_id(self) -> int:
        return int(self.hf_tokenizer.pad_token_id or 0)

    def __call__(self, reports: list[str] | str) -> WordTokens:
        if isinstance(reports, str):
            reports = [reports]
        for i, r in enumerate(reports):
            if not isinstance(r, str):
                raise TypeError(f"report {i} is {type(r).__name__}, expected a string")
        if len(reports) == 0:
            z = torch.zeros(0, 0, dtype=torch.long)
            return WordTokens(
                z, z.clone(), z.clone(), torch.zeros(0, 1, dtype=torch.bool), torch.zeros(0, 1).long(), []
            )
        texts = [clean_report(r) for r in reports] if self.clean else list(reports)
        enc = self.hf_tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.max_tokens,
            return_offsets_mapping=True,
            return_attention_mask=True,
            return_token_type_ids=False,
            return_tensors="np",
        )
        input_ids = np.asarray(enc["input_ids"], dtype=np.int64)
        attention = np.asarray(enc["attention_mask"], dtype=np.int64)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64)  # [B, T, 2]
        b, t = input_ids.shape
        # word ids of the pre-tokenizer; None ([CLS]/[SEP]/pad) -> NaN -> -1, converted in C
        raw = np.array([e.word_ids for e in enc.encodings], dtype=np.float64).reshape(b, t)
        raw_word = np.where(np.isnan(raw), -1, raw).astype(np.int64)

        # all pieces that belong to a pre-tokenizer word, over the whole batch (row-major order)
        flat = np.flatnonzero(raw_word.ravel() >= 0)
        row_of = flat // t
        ids = raw_word.ravel()[flat]
        # word ids are non-decreasing along a row: a new word starts where the id or the row changes
        new_word = np.ones(flat.size, dtype=bool)
        new_word[1:] = (ids[1:] != ids[:-1]) | (row_of[1:] != row_of[:-1])
        first = np.flatnonzero(new_word)
        last = np.append(first[1:] - 1, flat.size - 1).astype(np.int64) if flat.size else first
        run = np.cumsum(new_word) - 1  # word number (batch-wide) of each piece
        word_row = row_of[first]
        starts = offsets.reshape(-1, 2)[flat[first], 0]
        ends = offsets.reshape(-1, 2)[flat[last], 1]

        strings = self._word_strings(texts, word_row.tolist(), starts.tolist(), ends.tolist())
        valid = np.fromiter((_ALNUM.search(w) is not None for w in strings), dtype=bool, count=len(strings))
        valid &= ~self._cut_words(texts, attention, word_row, ends)
        counts = np.bincount(word_row[valid], minlength=b)
        base = np.cumsum(counts) - counts
        new_index = np.where(valid, np.cumsum(valid) - 1 - base[word_row], -1)
        piece_to_word = np.full(b * t, -1, dtype=np.int64)
        piece_to_word[flat] = new_index[run]
        piece_to_word = piece_to_word.reshape(b, t)

        # sentence of each valid word: the sentence span that contains its first character
        sid = self._sentence_ids(texts, word_row[valid], starts[valid])
        n_words = max(1, int(counts.max()) if b else 1)
        word_mask = np.zeros((b, n_words), dtype=bool)
        sentence_ids = np.full((b, n_words), -1, dtype=np.int64)
        word_mask[word_row[valid], new_index[valid]] = True
        sentence_ids[word_row[valid], new_index[valid]] = sid
        kept = [w for w, v in zip(strings, valid.tolist(), strict=True) if v]
        bounds = np.cumsum(counts).tolist()
        words = [kept[lo:hi] for lo, hi in zip([0] + bounds[:-1], bounds, strict=True)]
        return WordTokens(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(attention),
            piece_to_word=torch.from_numpy(piece_to_word),
            word_mask=torch.from_numpy(word_mask),
            sentence_ids=torch.from_numpy(sentence_ids),
            words=words,
        )

    def _cut_words(self, texts: list[str], attention: np.ndarray, word_row: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """bool per word: the last word of a truncated row whose text goes on past the cut (a fragment)."""
        cut = np.zeros(word_row.size, dtype=bool)
        if word_row.size == 0:
            return cut
        full = np.flatnonzero(attention.sum(axis=1) >= self.max_tokens)
        last = np.searchsorted(word_row, full, side="right") - 1  # word_row is sorted (row-major order)
        for row, w in zip(full.tolist(), last.tolist(), strict=True):
            if w < 0 or word_row[w] != row:
                continue
            end, text = int(ends[w]), texts[row]
            cut[w] = end < len(text) and _ALNUM.match(text[end]) is not None
        return cut

    def _word_strings(self, texts: list[str], rows: list[int], starts: list[int], ends: list[int]) -> list[str]:
        """The normalised text of every word; one normalizer call for the whole batch when possible."""
        raw = [texts[r][s:e] for r, s, e in zip(rows, starts, ends, strict=True)]
        if self._normalizer is None:
            return raw
        # words never contain whitespace, so they can be normalised joined by spaces and split again;
        # a normalizer that adds spaces (CJK characters) is caught by the count and done per word
        joined = self._normalizer.normalize_str(" ".join(raw)).split(" ")
        if len(joined) == len(raw):
            return joined
        return [self._normalizer.normalize_str(w).strip() for w in raw]

    @staticmethod
    def _sentence_ids(texts: list[str], rows: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Sentence index (in ``split_sentences`` of its report) of words at char ``starts`` of ``texts[rows]``."""
        if rows.size == 0:
            return np.zeros(0, dtype=np.int64)
        stride = max(len(x) for x in texts) + 1
        keys: list[int] = []
        first: list[int] = []
        for r, text in enumerate(texts):
            first.append(len(keys))
            keys.extend(r * stride + s for s, _ in sentence_spans(text))
        idx = np.searchsorted(np.asarray(keys, dtype=np.int64), rows * stride + starts, side="right") - 1
        return np.maximum(idx - np.asarray(first, dtype=np.int64)[rows], 0)
