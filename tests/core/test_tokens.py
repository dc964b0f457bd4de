"""The API and the engine count prompt tokens the same way."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from genqueue.tokens import count_prompt_tokens, encode_prompt, max_new_tokens_for


def _tok() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["the cat sat on the mat"] * 10,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def test_counts_match_encoding() -> None:
    tok = _tok()
    for prompt in ("", "the cat", "the cat sat on the mat and more"):
        for bos in (False, True):
            ids = encode_prompt(tok, prompt, 0, bos)
            assert count_prompt_tokens(tok, prompt, bos) == len(ids)
            if bos or not prompt:
                assert ids[0] == 0
    assert encode_prompt(tok, "", 0) == [0]  # an empty prompt starts from BOS


def test_max_new_tokens_clamped_to_context() -> None:
    assert max_new_tokens_for(10, 100, 64) == 54
    assert max_new_tokens_for(10, 5, 64) == 5
    assert max_new_tokens_for(64, 5, 64) == 0
