"""Tokenizer helpers shared by the text engine and the API's submit-time prompt check.

Imports only ``tokenizers`` (no numpy/onnxruntime), so the API can use it cheaply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_tokenizer(path: Path | str) -> Any:
    """A ``tokenizers.Tokenizer`` from a model folder's ``tokenizer.json``."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def encode_prompt(tokenizer: Any, prompt: str, bos_token_id: int) -> list[int]:
    """The ids the engine feeds for ``prompt``: no special tokens are added, and an empty prompt (or one
    that tokenizes to nothing) starts from BOS so the model always has a position to predict from."""
    ids = list(tokenizer.encode(prompt, add_special_tokens=False).ids)
    return ids or [bos_token_id]


def count_prompt_tokens(tokenizer: Any, prompt: str) -> int:
    """Prompt length in tokens as the engine counts it (an empty prompt counts 1, for BOS).

    A prompt fits a model when ``count_prompt_tokens(...) < context_length``: at least one new token must
    fit after it (the engine fails longer prompts with ``prompt_too_long``).
    """
    return max(1, len(tokenizer.encode(prompt, add_special_tokens=False).ids))


def prompt_fits(num_prompt_tokens: int, context_length: int) -> bool:
    return num_prompt_tokens < context_length


def max_new_tokens_for(num_prompt_tokens: int, requested: int, context_length: int) -> int:
    """``requested`` clamped to the context left after the prompt (0 when the prompt does not fit)."""
    return max(0, min(requested, context_length - num_prompt_tokens))
