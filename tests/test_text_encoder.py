"""Text encoders: bert-tiny and the offline MiniLM build, run, merge words and expose [CLS] attention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reclf.config import TextEncoderConfig
from reclf.data.tokenization import merge_pieces
from reclf.models.text import TextEncoder, TextEncoderError, build_text_encoder

REPORTS = [
    "No pneumothorax. The cardiomediastinal silhouette is normal.",
    "Large right pleural effusion, 2.5 cm nodule.",
    "Lungs clear.",
]


@pytest.fixture(scope="module")
def tiny() -> TextEncoder:
    torch.manual_seed(0)
    return build_text_encoder(TextEncoderConfig(name="bert-tiny", hidden_size=128, num_layers=2, num_heads=2)).eval()


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return build_text_encoder(TextEncoderConfig(name="minilm", max_tokens=64)).eval()


def test_bert_tiny_shapes_and_passthrough(tiny) -> None:
    assert tiny.hidden_size == 128 and tiny.tokenizer.max_tokens == 128
    assert tiny.tokenizer.vocab_size == 30522  # MiniLM's WordPiece vocabulary
    tokens = tiny.tokenizer(REPORTS)
    out = tiny(tokens)
    b, w = tokens.word_mask.shape
    assert out.words.shape == (b, w, 128) and out.global_.shape == (b, 128)
    assert torch.equal(out.word_mask, tokens.word_mask) and torch.equal(out.sentence_ids, tokens.sentence_ids)
    assert out.word_strings == tokens.words and out.cls_attention is None
    assert out.words[~out.word_mask].abs().sum() == 0  # padding words are zero
    assert out.words[out.word_mask].abs().sum(-1).gt(0).all()
    assert sum(p.numel() for p in tiny.parameters()) < 5_000_000


def test_bert_tiny_trains_and_freezes() -> None:
    torch.manual_seed(0)
    enc = build_text_encoder(TextEncoderConfig(name="bert-tiny", hidden_size=32, num_layers=1, num_heads=2))
    enc.train()
    out = enc.encode(REPORTS[:2])
    (out.words.sum() + out.global_.sum()).backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)  # no unused parameters (pooler dropped): DDP-safe
    # gradient checkpointing: same features, gradients still reach every parameter
    torch.manual_seed(0)
    ckpt = build_text_encoder(
        TextEncoderConfig(name="bert-tiny", hidden_size=32, num_layers=1, num_heads=2), gradient_checkpointing=True
    ).train()
    ckpt.backbone.load_state_dict(enc.backbone.state_dict())
    with torch.no_grad():
        assert torch.allclose(ckpt.eval().encode(REPORTS[:2]).words, enc.eval().encode(REPORTS[:2]).words, atol=1e-5)
    ckpt.train()
    out2 = ckpt.encode(REPORTS[:2])
    out2.words.sum().backward()
    assert all(p.grad is not None for p in ckpt.backbone.encoder.parameters())
    frozen = build_text_encoder(
        TextEncoderConfig(name="bert-tiny", hidden_size=32, num_layers=1, num_heads=2, freeze=True)
    )
    frozen.train()
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not frozen.backbone.training  # frozen backbone stays in eval mode (no dropout)


def test_minilm_shapes_and_sensible_embedding(minilm) -> None:
    assert minilm.hidden_size == 384
    out = minilm.encode(REPORTS)
    assert out.words.shape == (3, out.word_mask.shape[1], 384)
    sents = [
        "There is a large right pleural effusion.",
        "Large effusion in the right pleural space.",
        "The football match was played on a sunny afternoon.",
    ]
    out = minilm.encode(sents)
    mask = out.word_mask.unsqueeze(-1).float()
    emb = F.normalize((out.words * mask).sum(1) / mask.sum(1), dim=-1)  # mean over words, as all-MiniLM pools
    related, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert related > unrelated + 0.3, (related, unrelated)
    # a randomly initialised model would not separate them: the pretrained weights were really loaded
    torch.manual_seed(0)
    rand = build_text_encoder(TextEncoderConfig(name="bert-tiny", hidden_size=384, num_layers=1, num_heads=6)).eval()
    r = rand.encode(sents)
    m = r.word_mask.unsqueeze(-1).float()
    e = F.normalize((r.words * m).sum(1) / m.sum(1), dim=-1)
    assert float(e[0] @ e[1]) - float(e[0] @ e[2]) < related - unrelated


def test_minilm_cls_attention(minilm) -> None:
    tokens = minilm.tokenizer(REPORTS)
    out = minilm(tokens, need_cls_attention=True)
    assert minilm.backbone.config._attn_implementation != "eager"  # switched back after the call
    att = out.cls_attention
    assert att is not None and att.shape == tokens.word_mask.shape
    assert att[~tokens.word_mask].eq(0).all() and att[tokens.word_mask].gt(0).all()
    # reference: eager attention of the last layer, [CLS] row, mean over heads
    minilm.backbone.set_attn_implementation("eager")
    try:
        ref = (
            minilm.backbone(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_attentions=True)
            .attentions[-1][:, :, 0]
            .mean(1)
        )
    finally:
        minilm.backbone.set_attn_implementation("sdpa")
    assert torch.allclose(ref.sum(-1), torch.ones(3), atol=1e-5)  # a distribution over the pieces
    outside = (ref * (tokens.piece_to_word < 0)).sum(-1)  # on [CLS]/[SEP]/punctuation/padding
    assert torch.allclose(att.sum(-1) + outside, torch.ones(3), atol=1e-5)
    assert torch.allclose(att, merge_pieces(ref, tokens.piece_to_word, att.shape[1]), atol=1e-6)
    # asking for attention does not change the features
    plain = minilm(tokens)
    assert torch.allclose(plain.words, out.words, atol=1e-4)


def test_sum_of_last_n_layers_and_mean_merge(minilm) -> None:
    tokens = minilm.tokenizer(REPORTS[:2])
    with torch.no_grad():
        hs = minilm.backbone(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
        ).hidden_states
        last3 = TextEncoder(minilm.backbone, minilm.tokenizer, last_n_layers=3, word_merge="sum").eval()(tokens)
        last3_mean = TextEncoder(minilm.backbone, minilm.tokenizer, last_n_layers=3, word_merge="mean").eval()(tokens)
        last1 = minilm(tokens)
    summed = hs[-1] + hs[-2] + hs[-3]
    assert torch.allclose(last3.global_, summed[:, 0], atol=1e-4)
    assert torch.allclose(last1.global_, hs[-1][:, 0], atol=1e-4)
    n_words = tokens.word_mask.shape[1]
    assert torch.allclose(last3.words, merge_pieces(summed, tokens.piece_to_word, n_words), atol=1e-4)
    counts = merge_pieces(torch.ones(tokens.piece_to_word.shape), tokens.piece_to_word, n_words)
    assert counts.max() >= 4  # some word has many pieces, so sum and mean really differ
    assert torch.allclose(last3_mean.words * counts.unsqueeze(-1), last3.words, atol=1e-3)
    with pytest.raises(TextEncoderError, match="last_n_layers"):
        TextEncoder(minilm.backbone, minilm.tokenizer, last_n_layers=7)


def test_build_errors() -> None:
    with pytest.raises(TextEncoderError, match="not available offline"):
        build_text_encoder(TextEncoderConfig(name="no-such-org/no-such-model-xyz"))
    with pytest.raises(TextEncoderError, match="max_tokens"):
        build_text_encoder(TextEncoderConfig(name="minilm", max_tokens=1024))
    with pytest.raises(TextEncoderError, match="divisible"):
        build_text_encoder(TextEncoderConfig(name="bert-tiny", hidden_size=30, num_heads=4))


def _save_tiny(folder: Path) -> TextEncoder:
    torch.manual_seed(1)
    enc = build_text_encoder(TextEncoderConfig(name="bert-tiny", hidden_size=32, num_layers=1, num_heads=2)).eval()
    enc.backbone.save_pretrained(folder)
    enc.tokenizer.hf_tokenizer.save_pretrained(folder)
    return enc


def test_local_folder_and_remote_code_checkpoint(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    ref = _save_tiny(plain)
    expect = ref.encode(REPORTS[:2])
    loaded = build_text_encoder(TextEncoderConfig(name=str(plain))).eval()
    got = loaded.encode(REPORTS[:2])
    assert loaded.hidden_size == 32 and got.word_strings == expect.word_strings
    assert torch.allclose(got.words, expect.words, atol=1e-5)

    # a CXR-BERT-style folder: custom model_type + auto_map (remote code), weights under "bert."
    from safetensors.torch import load_file, save_file

    remote = tmp_path / "remote"
    _save_tiny(remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg.update(model_type="cxr-bert", architectures=["CXRBertModel"], auto_map={"AutoModel": "x.CXRBertModel"})
    (remote / "config.json").write_text(json.dumps(cfg))
    tok_cfg = json.loads((remote / "tokenizer_config.json").read_text())
    tok_cfg.update(tokenizer_class="CXRBertTokenizer", auto_map={"AutoTokenizer": ["x.CXRBertTokenizer", None]})
    (remote / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    weights = load_file(remote / "model.safetensors")
    save_file({f"bert.{k}": v.contiguous() for k, v in weights.items()}, remote / "model.safetensors")
    as_bert = build_text_encoder(TextEncoderConfig(name=str(remote))).eval()
    out = as_bert.encode(REPORTS[:2])
    assert out.word_strings == expect.word_strings
    assert torch.allclose(out.words, expect.words, atol=1e-5)

    # weights that do not fit a BertModel: a clear error
    save_file({"something.else": torch.zeros(2)}, remote / "model.safetensors")
    with pytest.raises(TextEncoderError, match="BERT"):
        build_text_encoder(TextEncoderConfig(name=str(remote)))


def test_mean_pooling_is_the_mean_over_real_pieces() -> None:
    torch.manual_seed(0)
    enc = build_text_encoder(TextEncoderConfig(name="bert-tiny", pooling="mean")).eval()
    reports = ["Small left effusion.", "Heart size is enlarged and there is mild pulmonary edema."]
    tokens = enc.tokenizer(reports)
    with torch.no_grad():
        out = enc(tokens)
        hidden = enc.backbone(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    for b in range(2):
        n = int(tokens.attention_mask[b].sum())
        torch.testing.assert_close(out.global_[b], hidden[b, :n].mean(0), atol=1e-5, rtol=1e-5)
    with pytest.raises(TextEncoderError, match="pooling"):
        build_text_encoder(TextEncoderConfig(name="bert-tiny", pooling="attention"))


def test_frozen_encoder_cache_returns_exactly_the_uncached_outputs() -> None:
    torch.manual_seed(0)
    cfg = TextEncoderConfig(name="bert-tiny", hidden_size=32, num_layers=1, num_heads=2, freeze=True, cache_size=100)
    enc = build_text_encoder(cfg).train()  # a frozen backbone stays in eval mode: outputs are deterministic
    plain = TextEncoder(enc.backbone, enc.tokenizer, freeze=True, cache_size=0)
    assert enc.cache is not None and plain.cache is None
    first = enc.encode(REPORTS[:2], need_cls_attention=True)
    assert len(enc.cache) == 2 and enc.cache.misses == 2
    # a batch mixing seen and new reports, in another order and padding width
    batch = [REPORTS[2], REPORTS[0], REPORTS[1] + " Stable."]
    cached, fresh = enc.encode(batch, need_cls_attention=True), plain.encode(batch, need_cls_attention=True)
    assert enc.cache.hits == 1 and enc.cache.misses == 4 and len(enc.cache) == 4
    for name in ("global_", "words", "cls_attention"):
        assert torch.allclose(getattr(cached, name), getattr(fresh, name), atol=1e-5), name
    assert torch.equal(cached.word_mask, fresh.word_mask) and cached.word_strings == fresh.word_strings
    assert torch.allclose(
        first.words[0, : int(first.word_mask[0].sum())], cached.words[1, : int(cached.word_mask[1].sum())], atol=1e-6
    )
    # a full cache keeps working (computes the rest each time) and never grows past its size
    small = TextEncoder(enc.backbone, enc.tokenizer, freeze=True, cache_size=1)
    out = small.encode(batch)
    assert len(small.cache) == 1 and torch.allclose(out.words, fresh.words, atol=1e-5)
    # a trainable encoder has no cache
    assert (
        build_text_encoder(TextEncoderConfig(name="bert-tiny", hidden_size=32, num_layers=1, num_heads=2)).cache is None
    )


def test_freeze_layers_freezes_embeddings_and_the_bottom_layers() -> None:
    cfg = TextEncoderConfig(name="bert-tiny", hidden_size=32, num_layers=3, num_heads=2, freeze_layers=2)
    enc = build_text_encoder(cfg)
    trainable = {
        n.split(".")[1] + "." + n.split(".")[3] if ".layer." in n else n.split(".")[1]
        for n, p in enc.backbone.named_parameters(prefix="bb")
        if p.requires_grad
    }
    assert trainable == {"encoder.2"}
    assert enc.cache is None  # only a fully frozen backbone is cached
    with pytest.raises(TextEncoderError, match="freeze_layers=4 must be in 0..3"):
        build_text_encoder(
            TextEncoderConfig(name="bert-tiny", hidden_size=32, num_layers=3, num_heads=2, freeze_layers=4)
        )


def test_cache_file_round_trip_and_refusal_of_another_encoder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = TextEncoderConfig(name="bert-tiny", hidden_size=32, num_layers=1, num_heads=2, freeze=True)
    enc = build_text_encoder(cfg)
    assert enc.precompute(REPORTS + REPORTS[:1], batch_size=2) == 3
    path = tmp_path / "text.safetensors"
    enc.save_cache(path)
    again = TextEncoder(enc.backbone, enc.tokenizer, freeze=True, cache_size=10)
    again.pending_cache_file = str(path)
    out = again.encode(REPORTS, need_cls_attention=True)  # loads the file at the first call: all hits
    assert again.cache.hits == 3 and again.cache.misses == 0
    ref = TextEncoder(enc.backbone, enc.tokenizer, freeze=True, cache_size=0).encode(REPORTS, need_cls_attention=True)
    assert torch.allclose(out.words, ref.words, atol=1e-5) and torch.allclose(out.cls_attention, ref.cls_attention)
    # another encoder (other weights) refuses the file, and as a pending file it is ignored, not used
    torch.manual_seed(1)
    other = build_text_encoder(cfg)
    with pytest.raises(TextEncoderError, match="another text encoder"):
        other.load_cache(path)
    other.pending_cache_file = str(path)
    other.encode(REPORTS)
    assert other.cache.hits == 0 and other.cache.misses == 3


def test_max_pooling_is_the_max_over_real_pieces() -> None:
    torch.manual_seed(0)
    enc = build_text_encoder(
        TextEncoderConfig(name="bert-tiny", hidden_size=32, num_layers=1, num_heads=2, pooling="max")
    )
    enc.eval()
    tokens = enc.tokenizer(REPORTS)
    out = enc(tokens)
    hidden = enc.backbone(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    for i in range(len(REPORTS)):
        n = int(tokens.attention_mask[i].sum())
        assert torch.allclose(out.global_[i], hidden[i, :n].amax(dim=0), atol=1e-6)  # padding never wins


def test_keep_layers_runs_the_first_n_pretrained_layers(minilm) -> None:
    """MGCA's ClinicalBERT is its first 6 layers: the cut encoder's output is the full one's hidden state n."""
    cut = build_text_encoder(TextEncoderConfig(name="minilm", max_tokens=64, keep_layers=2)).eval()
    assert len(cut.backbone.encoder.layer) == 2 and cut.backbone.config.num_hidden_layers == 2
    tokens = minilm.tokenizer(REPORTS[:2])
    with torch.no_grad():
        hs = minilm.backbone(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
        ).hidden_states
        out = cut(tokens)
    assert torch.allclose(out.global_, hs[2][:, 0], atol=1e-4)
    assert not torch.allclose(out.global_, hs[-1][:, 0], atol=1e-2)
    assert cut.fingerprint() != minilm.fingerprint()  # a cached feature file of the full encoder is not reused
    with pytest.raises(TextEncoderError, match="keep_layers=7"):
        build_text_encoder(TextEncoderConfig(name="minilm", keep_layers=7))


def test_words_alone_are_context_free_and_the_report_is_their_bag() -> None:
    """``context="word"``: a word's vector is the word encoded alone (what the report context encodes for a report
    of that one word), the same wherever it stands; the report vector is the mean of its words; the [CLS]
    attention is uniform; a report and its twin with sides swapped between two findings are the same bag."""
    torch.manual_seed(0)
    cfg = TextEncoderConfig(name="bert-tiny", hidden_size=32, num_layers=2, num_heads=2, word_merge="mean")
    plain = build_text_encoder(cfg).eval()
    alone = TextEncoder(plain.backbone, plain.tokenizer, word_merge="mean", context="word").eval()
    true = "Small effusion on the left. Pneumothorax on the right."
    swapped = "Small effusion on the right. Pneumothorax on the left."
    with torch.no_grad():
        out = alone.encode([true, swapped, "pneumothorax"], need_cls_attention=True)
        ref = plain.encode(["pneumothorax", "left"])
    n = int(out.word_mask[0].sum())
    assert out.word_strings[0][4] == "left" and out.word_strings[1][8] == "left" and n == 9
    torch.testing.assert_close(out.words[2, 0], ref.words[0, 0], atol=1e-5, rtol=1e-5)  # a multi-piece word
    torch.testing.assert_close(out.words[0, 5], ref.words[0, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.words[1, 8], ref.words[1, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.words[0, 4], out.words[1, 8])  # "left" in either place
    torch.testing.assert_close(out.global_[0], out.words[0, :n].mean(0), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.global_[0], out.global_[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.cls_attention[0, :n], torch.full((n,), 1 / n))
    assert (out.words[2, 1:] == 0).all() and float(out.cls_attention[2, 0]) == 1.0
    # a report context differs: the same word reads its neighbours
    with torch.no_grad():
        ctx = plain.encode([true, swapped])
    assert not torch.allclose(ctx.words[0, 4], ctx.words[1, 8], atol=1e-3)
    assert alone.fingerprint() != plain.fingerprint()
    with pytest.raises(TextEncoderError, match="context"):
        TextEncoder(plain.backbone, plain.tokenizer, context="sentence")
