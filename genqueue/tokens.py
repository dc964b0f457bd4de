"""Prompt tokenization shared by the API's submit-time check and the text engine, so both count alike.

Imports only ``tokenizers`` (no numpy, no onnxruntime).
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any


def load_tokenizer(path: Path | str) -> Any:
    """A ``tokenizers.Tokenizer`` from a model folder's ``tokenizer.json``."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def encode_prompt(tokenizer: Any, prompt: str, bos_token_id: int, prepend_bos: bool = False) -> list[int]:
    """The ids the engine feeds for ``prompt``. Models trained with BOS before every document
    (manifest ``text.prepend_bos``) get it in front; an empty prompt always starts from BOS so the model
    has a position to predict from."""
    ids = list(tokenizer.encode(prompt, add_special_tokens=False).ids)
    if prepend_bos or not ids:
        ids.insert(0, bos_token_id)
    return ids


_BYTE_LEVEL: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()  # tokenizer -> per-byte bound holds


def surely_fits(tokenizer: Any, prompt: str, prepend_bos: bool, context_length: int) -> bool:
    """True when ``prompt`` fits ``context_length`` (as :func:`count_prompt_tokens` counts) without being
    tokenized; False means "count it". A byte-level BPE without a normalizer (GPT-2's kind) maps each UTF-8
    byte to one symbol and merges symbols, so it makes at most one token per byte: a prompt of fewer bytes
    than the context less one (for BOS) fits. Not with ``add_prefix_space`` (a space added before every
    piece of text between added tokens) nor with ``byte_fallback`` (a missing character becomes one token
    per byte of its own, beside the pieces it was split from): those are always counted. Tokenizing cost a
    bulk submit about a tenth of its CPU, and most prompts are far shorter than the context."""
    byte_level = _BYTE_LEVEL.get(tokenizer)
    if byte_level is None:
        from tokenizers import models, pre_tokenizers

        pre, model = tokenizer.pre_tokenizer, tokenizer.model
        byte_level = _BYTE_LEVEL[tokenizer] = (
            tokenizer.normalizer is None and isinstance(pre, pre_tokenizers.ByteLevel) and not pre.add_prefix_space
            and isinstance(model, models.BPE) and not model.byte_fallback)
    if not byte_level:
        return False
    room = context_length - 1  # count_prompt_tokens adds one for BOS (or for an empty prompt)
    return 4 * len(prompt) < room or len(prompt.encode("utf-8", "surrogatepass")) < room


def count_prompt_tokens(tokenizer: Any, prompt: str, prepend_bos: bool = False) -> int:
    """Prompt length in tokens as the engine counts it. A prompt fits a model when this is below
    ``context_length``: at least one new token must fit after it."""
    n = len(tokenizer.encode(prompt, add_special_tokens=False))  # the Encoding's length: no list of ids built
    return n + 1 if (prepend_bos or n == 0) else n


def max_new_tokens_for(num_prompt_tokens: int, requested: int, context_length: int) -> int:
    """``requested`` clamped to the context left after the prompt (0 when the prompt does not fit)."""
    return max(0, min(requested, context_length - num_prompt_tokens))
