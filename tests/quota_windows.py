"""The jobs-per-minute quota counts in calendar minutes (a Redis key per minute): a test that fills the
window and expects a refusal must not straddle a minute boundary, or its later requests land in a fresh one."""

from __future__ import annotations

import time


def early_in_a_minute(margin_s: float = 15.0) -> None:
    """Return at once when at least ``margin_s`` of this minute are left; else once the next minute begins."""
    left = 60.0 - time.time() % 60.0
    if left < margin_s:
        time.sleep(left + 0.05)
