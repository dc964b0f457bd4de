"""Automatic pre-screen: cheap flags with scores that decide, under the "auto" policy, what moderators see.

The rules are deliberately simple and explainable; each flag names its rule and a score in [0, 1].
"""

from __future__ import annotations

import io
import re
from typing import Any

from genqueue.enums import ReviewPolicy, ReviewStatus

# A small default list; deployments extend it with GENQUEUE_BLOCKLIST (comma separated).
DEFAULT_BLOCKLIST = ("kill", "hate", "blood", "weapon")
_WORD = re.compile(r"[a-z']+")


def text_flags(texts: list[str], blocklist: tuple[str, ...] = DEFAULT_BLOCKLIST) -> list[dict[str, Any]]:
    flags: list[dict[str, Any]] = []
    words = [w for t in texts for w in _WORD.findall(t.lower())]
    hits = sum(1 for w in words if w in blocklist)
    if hits:
        flags.append({"rule": "blocklist", "score": round(min(1.0, hits / 3), 3)})
    if words:
        trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
        if len(trigrams) >= 6:
            repeated = 1 - len(set(trigrams)) / len(trigrams)
            if repeated >= 0.5:
                flags.append({"rule": "repetition", "score": round(repeated, 3)})
    if all(not t.strip() for t in texts):
        flags.append({"rule": "empty_output", "score": 1.0})
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


def review_status(policy: str, auto_policy: str, flags: list[dict[str, Any]]) -> ReviewStatus:
    if policy == ReviewPolicy.none.value:
        return ReviewStatus.not_required
    if policy == ReviewPolicy.required.value:
        return ReviewStatus.pending
    if auto_policy == "all":
        return ReviewStatus.pending
    if auto_policy == "none":
        return ReviewStatus.not_required
    return ReviewStatus.pending if flags else ReviewStatus.not_required
