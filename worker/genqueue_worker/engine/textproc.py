"""Tokenizer helpers for the text engine; they live in the core package so the API counts alike."""

from genqueue.tokens import (
    count_prompt_tokens,
    encode_prompt,
    load_tokenizer,
    max_new_tokens_for,
)

__all__ = ["count_prompt_tokens", "encode_prompt", "load_tokenizer", "max_new_tokens_for"]
