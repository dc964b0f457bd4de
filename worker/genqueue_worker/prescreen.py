"""Automatic pre-screen: cheap, explainable rules whose flags decide, under the ``flagged`` review policy,
which outputs moderators see (and in which order: the highest score first).

A rule is a small class with a ``name`` and a ``score`` in [0, 1] for a job's texts; 0 means no flag.
Deployments add words to the blocklist with GENQUEUE_BLOCKLIST (comma separated) and/or
GENQUEUE_BLOCKLIST_FILE (one word or phrase a line). What happens to a flagged output is decided in
genqueue.review, not here.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Protocol

DEFAULT_BLOCKLIST = ("kill", "hate", "blood", "weapon")
_WORD = re.compile(r"[a-z']+")


class TextRule(Protocol):
    name: str

    def score(self, texts: Sequence[str]) -> float: ...


class Blocklist:
    """Blocked words (whole words) and phrases (word sequences); three hits or more score 1."""

    name = "blocklist"

    def __init__(self, entries: Sequence[str]) -> None:
        words, phrases = set(), []
        for e in entries:
            parts = _WORD.findall(e.lower())
            if len(parts) == 1:
                words.add(parts[0])
            elif parts:
                phrases.append(" ".join(parts))
        self.words = frozenset(words)
        self.phrases = tuple(phrases)

    def score(self, texts: Sequence[str]) -> float:
        hits = 0
        for t in texts:
            words = _WORD.findall(t.lower())
            hits += sum(1 for w in words if w in self.words)
            if self.phrases:
                joined = f" {' '.join(words)} "
                hits += sum(joined.count(f" {p} ") for p in self.phrases)
        return min(1.0, hits / 3)


class Repetition:
    """The share of repeated word trigrams, once it reaches one half (a model stuck in a loop)."""

    name = "repetition"

    def score(self, texts: Sequence[str]) -> float:
        words = [w for t in texts for w in _WORD.findall(t.lower())]
        trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
        if len(trigrams) < 6:
            return 0.0
        repeated = 1 - len(set(trigrams)) / len(trigrams)
        return repeated if repeated >= 0.5 else 0.0


class EmptyOutput:
    name = "empty_output"

    def score(self, texts: Sequence[str]) -> float:
        return 1.0 if all(not t.strip() for t in texts) else 0.0


class _Pattern:
    """Personal data matched by a pattern: each match adds ``per_match`` to the score."""

    name = "pattern"
    pattern: ClassVar[re.Pattern[str]]
    per_match: ClassVar[float] = 0.5

    def matches(self, text: str) -> int:
        return len(self.pattern.findall(text))

    def score(self, texts: Sequence[str]) -> float:
        return min(1.0, self.per_match * sum(self.matches(t) for t in texts))


class Email(_Pattern):
    name = "pii_email"
    pattern = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


class Phone(_Pattern):
    """Phone numbers: 9 to 15 digits, optionally with a leading +, in groups split by spaces, dots or dashes."""

    name = "pii_phone"
    pattern = re.compile(r"(?<![\w+])\+?(?:\(\d{1,4}\)[\s.-]?)?\d[\d\s.-]{7,}\d(?!\w)")

    def matches(self, text: str) -> int:
        # A run of digits with separators is a phone number only with a phone number's digit count; a date
        # such as 2024-01-02 has 8.
        return sum(1 for m in self.pattern.findall(text) if 9 <= sum(c.isdigit() for c in m) <= 15)


class Url(_Pattern):
    name = "url"
    pattern = re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)
    per_match = 0.3


def load_blocklist(inline: str, path: Path | None) -> tuple[str, ...]:
    """The built-in words plus a deployment's (inline, comma separated, and from a file)."""
    entries = list(DEFAULT_BLOCKLIST)
    entries += [w.strip() for w in inline.split(",") if w.strip()]
    if path is not None:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                entries.append(line)
    return tuple(entries)


def default_rules(blocklist: Sequence[str] = DEFAULT_BLOCKLIST) -> tuple[TextRule, ...]:
    return (Blocklist(blocklist), Repetition(), EmptyOutput(), Email(), Phone(), Url())


@lru_cache(maxsize=4)
def _rules(inline: str, path: Path | None) -> tuple[TextRule, ...]:
    return default_rules(load_blocklist(inline, path))


def text_rules(settings: Any) -> tuple[TextRule, ...]:
    """The rules of this deployment (read once per blocklist setting)."""
    return _rules(settings.blocklist, settings.blocklist_file)


def text_flags(texts: list[str], rules: Sequence[TextRule] | None = None) -> list[dict[str, Any]]:
    flags: list[dict[str, Any]] = []
    for rule in rules if rules is not None else default_rules():
        score = rule.score(texts)
        if score > 0:
            flags.append({"rule": rule.name, "score": round(min(1.0, score), 3)})
    return flags


BLANK_STD = 4.0  # grey-level standard deviation below which an image counts as blank


def decoded_luma_std(data: bytes) -> float:
    """The grey-level standard deviation of an encoded image, for images whose engine did not report it."""
    import numpy as np
    from PIL import Image

    return float(np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32).std())


def image_flags(luma_stds: list[float]) -> list[dict[str, Any]]:
    """Flags of one job's images from each image's grey-level standard deviation (``luma_std``)."""
    flags: list[dict[str, Any]] = []
    blank = sum(1 for s in luma_stds if s < BLANK_STD)  # a near-uniform image: the generator collapsed
    if blank:
        flags.append({"rule": "blank_image", "score": round(blank / len(luma_stds), 3)})
    return flags
