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


def test_surely_fits_never_passes_a_prompt_that_does_not_fit() -> None:
    import random

    from tokenizers import normalizers

    from genqueue.tokens import surely_fits

    tok = _tok()
    rng = random.Random(0)
    alphabet = "the cat sat on mat " + "é€漢😀\n\t"
    passed = 0
    for _ in range(400):
        prompt = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        for ctx in (2, 8, 16, 32, 64, 200):
            for bos in (False, True):
                if surely_fits(tok, prompt, bos, ctx):
                    passed += 1
                    assert count_prompt_tokens(tok, prompt, bos) < ctx, (prompt, ctx, bos)
    assert passed > 1000  # the shortcut does apply to this byte-level BPE
    other = _tok()
    other.normalizer = normalizers.NFKC()  # may turn one character into many: always counted
    assert not surely_fits(other, "ﷺ", False, 1000)
    prefixed = _tok()
    prefixed.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)  # a space before every piece
    assert not surely_fits(prefixed, "a", False, 1000)
    fallback = Tokenizer(models.BPE(byte_fallback=True))  # a missing character: a token per byte of it
    fallback.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert not surely_fits(fallback, "a", False, 1000)
