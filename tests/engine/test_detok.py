"""Incremental detokenization: the pieces add up to decoding every id at once."""

from __future__ import annotations

from typing import Any

import numpy as np

from genqueue_worker.engine.detok import IncrementalText


def check_against_full_decode(tok: Any, ids: list[int]) -> IncrementalText:
    decode = lambda xs: tok.decode(list(xs), skip_special_tokens=True)  # noqa: E731
    clean = lambda s: s.replace("\x00", "\ufffd")  # noqa: E731
    text = IncrementalText(decode, clean)
    for k, t in enumerate(ids):
        before = text.text
        grew = text.add(ids[:k], t)
        full = clean(decode(ids[: k + 1]))
        assert full.startswith(text.text), (k, text.text, full)
        assert grew == (text.text != before)
        if not full.endswith("\ufffd"):  # a whole character at the end: nothing is held back
            assert text.text == full
    return text


def test_bytes_split_across_tokens_and_nul(byte_tokenizer: Any) -> None:
    s = "añb€c😀\x00d"  # 1-, 2-, 3- and 4-byte characters, and NUL
    ids = byte_tokenizer.encode(s, add_special_tokens=False).ids
    assert len(ids) == len(s.encode())  # one token per byte: the characters arrive in pieces
    assert check_against_full_decode(byte_tokenizer, ids).text == s.replace("\x00", "\ufffd")


def test_random_bytes_including_invalid_utf8(byte_tokenizer: Any) -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        check_against_full_decode(byte_tokenizer, rng.integers(0, 257, 60).tolist())  # 256 is the special EOS


def test_random_ids_of_a_bpe_vocabulary_with_merges() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["The café serves crème brûlée. 東京の天気は晴れ。 Ünïcödé 😀 everywhere!"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    assert tok.get_vocab_size() > 256  # merges: tokens of several bytes, some ending mid-character
    rng = np.random.default_rng(1)
    for _ in range(20):
        check_against_full_decode(tok, rng.integers(0, tok.get_vocab_size(), 80).tolist())
    ids = tok.encode(corpus[0]).ids
    assert check_against_full_decode(tok, ids).text == corpus[0]
