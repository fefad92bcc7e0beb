"""WordTokenizer: pieces -> words, the valid-word mask, sentence ids, truncation, merge_pieces."""

from __future__ import annotations

import pytest
import torch

from reclf.data.tokenization import WordTokenizer, WordTokens, merge_pieces
from reclf.models.text import minilm_dir


@pytest.fixture(scope="module")
def hf_tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)


@pytest.fixture(scope="module")
def tok(hf_tok) -> WordTokenizer:
    return WordTokenizer(hf_tok, max_tokens=64)


def pieces_of(tokens: WordTokens, hf_tok, b: int, w: int) -> list[str]:
    ids = tokens.input_ids[b][tokens.piece_to_word[b] == w].tolist()
    return hf_tok.convert_ids_to_tokens(ids)


def test_medical_words_split_into_many_pieces_are_one_word(tok, hf_tok) -> None:
    t = tok(["No pneumothorax. The cardiomediastinal silhouette is normal."])
    assert t.words == [["no", "pneumothorax", "the", "cardiomediastinal", "silhouette", "is", "normal"]]
    for w, word in enumerate(t.words[0]):
        pieces = pieces_of(t, hf_tok, 0, w)
        assert "".join(p.removeprefix("##") for p in pieces) == word
    assert len(pieces_of(t, hf_tok, 0, 1)) >= 4  # pneumothorax really is split
    assert len(pieces_of(t, hf_tok, 0, 3)) >= 4  # cardiomediastinal too
    assert t.word_mask.tolist() == [[True] * 7]
    assert t.sentence_ids.tolist() == [[0, 0, 1, 1, 1, 1, 1]]
    # pieces of a word are contiguous and words are numbered in reading order
    p2w = t.piece_to_word[0][t.piece_to_word[0] >= 0]
    assert torch.all(p2w[1:] >= p2w[:-1])


def test_special_tokens_punctuation_and_padding_are_masked(tok, hf_tok) -> None:
    t = tok(["Heart size: normal, no effusion; lungs (clear) - ok!!", "ok"])
    assert t.words[0] == ["heart", "size", "normal", "no", "effusion", "lungs", "clear", "ok"]
    assert t.words[1] == ["ok"]
    pieces = hf_tok.convert_ids_to_tokens(t.input_ids[0].tolist())
    for piece, w in zip(pieces, t.piece_to_word[0].tolist(), strict=True):
        if piece in ("[CLS]", "[SEP]", "[PAD]") or not any(c.isalnum() for c in piece):
            assert w == -1, piece
        else:
            assert w >= 0, piece
    assert t.piece_to_word[1][t.attention_mask[1] == 0].eq(-1).all()
    assert t.word_mask.sum(1).tolist() == [8, 1]
    assert t.sentence_ids[1].tolist() == [0] + [-1] * 7
    assert t.word_mask.shape == t.sentence_ids.shape == (2, 8)


def test_decimals_de_id_and_case(tok) -> None:
    t = tok(["A 2.5 CM Nodule, seen by Dr. ___ today. Stable."])
    assert t.words == [["a", "2", "5", "cm", "nodule", "seen", "by", "dr", "today", "stable"]]
    assert t.sentence_ids[0].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]  # no split at "2.5" nor at "Dr."


def test_truncated_word_is_dropped_not_kept_as_a_fragment(hf_tok) -> None:
    report = "Small left pneumothorax."
    full = WordTokenizer(hf_tok, max_tokens=64)(report)
    n_pieces = len(pieces_of(full, hf_tok, 0, 2))  # pieces of "pneumothorax"
    assert n_pieces >= 3
    # keep [CLS] small left + 2 pieces of pneumothorax + [SEP]: the fragment is no word
    cut = WordTokenizer(hf_tok, max_tokens=1 + 2 + 2 + 1)(report)
    assert cut.words == [["small", "left"]]
    assert cut.word_mask.tolist() == [[True, True]]
    assert cut.piece_to_word[0].tolist() == [-1, 0, 1, -1, -1, -1]
    # a word that ends exactly at the cut is whole and stays
    exact = WordTokenizer(hf_tok, max_tokens=1 + 2 + n_pieces + 1)(report)
    assert exact.words == [["small", "left", "pneumothorax"]]
    # words entirely past the cut are gone
    cut2 = WordTokenizer(hf_tok, max_tokens=4)(report)
    assert cut2.words == [["small", "left"]]
    assert hf_tok.convert_ids_to_tokens(cut2.input_ids[0].tolist())[-1] == "[SEP]"
    # the same rule alone and in a batch with a short report
    batch = WordTokenizer(hf_tok, max_tokens=6)([report, "Clear."])
    assert batch.words == [["small", "left"], ["clear"]]


def test_sentence_ids_follow_split_sentences(tok) -> None:
    from reclf.data.reports import split_sentences

    report = "No pneumothorax. Heart size is normal.\n\nLungs clear. e.g. no focal consolidation"
    t = tok([report])
    assert t.words[0][-5:] == ["e", "g", "no", "focal", "consolidation"]
    assert t.sentence_ids[0].tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3, 3]
    assert len(split_sentences(report)) == 4


def test_alone_equals_in_batch(tok) -> None:
    reports = [
        "Ok.",
        "Moderate right pleural effusion with adjacent atelectasis. No pneumothorax. Cardiomediastinal "
        "silhouette is stable, 2.3 cm opacity in the left lower lobe.",
        "",
        "Lungs are clear.",
    ]
    batch = tok(reports)
    for b, report in enumerate(reports):
        alone = tok([report])
        t_len = int(alone.attention_mask.sum())
        w_len = len(alone.words[0])
        assert batch.words[b] == alone.words[0]
        assert torch.equal(batch.input_ids[b, :t_len], alone.input_ids[0, :t_len])
        assert torch.equal(batch.piece_to_word[b, :t_len], alone.piece_to_word[0, :t_len])
        assert batch.piece_to_word[b, t_len:].eq(-1).all()
        assert torch.equal(batch.sentence_ids[b, :w_len], alone.sentence_ids[0, :w_len])
        assert not batch.word_mask[b, w_len:].any()
    assert batch.words[2] == [] and not batch.word_mask[2].any()


def test_empty_batch_shapes_and_errors(tok, hf_tok) -> None:
    t = tok(["", "..."])
    assert t.word_mask.shape == (2, 1) and not t.word_mask.any()
    assert t.words == [[], []]
    none = tok([])
    assert len(none) == 0 and none.word_mask.shape == (0, 1) and none.words == []
    with pytest.raises(TypeError, match="report 1"):
        tok(["fine", None])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        WordTokenizer(hf_tok, max_tokens=2)

    class Slow:
        is_fast = False

    with pytest.raises(TypeError, match="fast"):
        WordTokenizer(Slow(), 16)


def test_wordtokens_to_index_trim(tok) -> None:
    t = tok(["No pneumothorax.", "Large right pleural effusion with atelectasis.", "Clear."])
    moved = t.to("cpu")
    assert torch.equal(moved.input_ids, t.input_ids) and moved.words is t.words
    sub = t.index(torch.tensor([2, 0]))
    assert sub.words == [t.words[2], t.words[0]] and len(sub) == 2
    assert torch.equal(sub.piece_to_word[1], t.piece_to_word[0])
    assert t[1:].words == t.words[1:] and t[0].words == [t.words[0]]
    mask_rows = t.index(torch.tensor([True, False, True]))
    assert mask_rows.words == [t.words[0], t.words[2]]
    trimmed = sub.trim()
    assert trimmed.input_ids.shape[1] == int(sub.attention_mask.sum(1).max())
    assert trimmed.word_mask.shape[1] == 2  # "no pneumothorax"
    assert t.num_words.tolist() == [2, 6, 1]


def test_merge_pieces_sum_and_mean() -> None:
    hidden = torch.arange(1, 7, dtype=torch.float32).view(1, 6, 1).repeat(1, 1, 2)  # values 1..6
    hidden[..., 1] *= 10
    p2w = torch.tensor([[-1, 0, 0, 0, 1, -1]])  # [CLS] w0 w0 w0 w1 [SEP]
    s = merge_pieces(hidden, p2w, 3, "sum")
    m = merge_pieces(hidden, p2w, 3, "mean")
    assert s.shape == m.shape == (1, 3, 2)
    assert s[0, :, 0].tolist() == [2 + 3 + 4, 5, 0]
    assert m[0, :, 0].tolist() == [3.0, 5.0, 0.0]
    assert s[0, :, 1].tolist() == [90, 50, 0]
    # 2-D input (attention weights) and gradients reach exactly the merged pieces
    att = torch.rand(1, 6, requires_grad=True)
    merged = merge_pieces(att, p2w, 2)
    assert merged.shape == (1, 2)
    merged.sum().backward()
    assert att.grad.tolist() == [[0, 1, 1, 1, 1, 0]]
    with pytest.raises(ValueError):
        merge_pieces(hidden, p2w, 3, "max")


def test_merge_pieces_matches_loop_on_real_tokens(tok) -> None:
    t = tok(["Cardiomediastinal silhouette normal. No pneumothorax.", "Pleural effusion."])
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(*t.input_ids.shape, 4, generator=gen)
    merged = merge_pieces(hidden, t.piece_to_word, t.word_mask.shape[1], "mean")
    for b in range(2):
        for w in range(len(t.words[b])):
            expect = hidden[b][t.piece_to_word[b] == w].mean(0)
            assert torch.allclose(merged[b, w], expect, atol=1e-6)
        assert merged[b, len(t.words[b]) :].eq(0).all()


def test_tokenizer_pickles_for_dataloader_workers(tok) -> None:
    import pickle

    again = pickle.loads(pickle.dumps(tok))
    report = ["Moderate cardiomegaly. No pneumothorax."]
    a, b = tok(report), again(report)
    assert a.words == b.words and torch.equal(a.piece_to_word, b.piece_to_word)


def test_word_strings_are_normalised_like_the_pieces(tok, hf_tok) -> None:
    # accents stripped and lower-cased (uncased vocabulary); CJK characters are words of their own
    t = tok(["Café NAÏVE Pneumothorax", "Café 中文 test"])
    assert t.words == [["cafe", "naive", "pneumothorax"], ["cafe", "中", "文", "test"]]
    for b in range(2):
        for w, word in enumerate(t.words[b]):
            assert "".join(p.removeprefix("##") for p in pieces_of(t, hf_tok, b, w)) == word
