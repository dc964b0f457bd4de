"""The jobs-per-minute quota counts in calendar minutes (a Redis key per minute): a test that fills the
window and expects a refusal must not straddle a minute boundary, or its later requests land in a fresh one."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def early_in_a_minute(margin_s: float = 15.0) -> None:
    """Return at once when at least ``margin_s`` of this minute are left; else once the next minute begins."""
    left = 60.0 - time.time() % 60.0
    if left < margin_s:
        time.sleep(left + 0.05)


def in_one_second(send: Callable[[], T], tries: int = 4) -> T:
    """``send()`` started at the start of a second and done before it ends: what it returned. The
    requests-per-second quota counts in calendar seconds, and a loaded machine may take longer than one for a
    few requests; such a try is thrown away (what it stored stays) and made again in a later second."""
    for _ in range(tries):
        time.sleep(1 - time.time() % 1)
        second = int(time.time())
        out = send()
        if int(time.time()) == second:
            return out
    raise AssertionError(f"no try of {tries} sent its requests within one second")
