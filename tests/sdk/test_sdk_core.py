"""The retry policy's delays: the server's Retry-After (seconds or an HTTP date) when it sent one, capped;
exponential backoff with jitter otherwise."""

from __future__ import annotations

import email.utils
import time

import httpx

from genqueue.sdk import RetryPolicy
from genqueue.sdk._core import retry_after


def answer(value: str | None) -> httpx.Response:
    return httpx.Response(429, headers={"Retry-After": value} if value is not None else {})


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after(answer("3")) == 3.0
    later = email.utils.formatdate(time.time() + 20, usegmt=True)
    assert 18 <= (retry_after(answer(later)) or 0) <= 20
    assert retry_after(answer("soon")) is None
    assert retry_after(answer(None)) is None


def test_delay_follows_the_server_then_backs_off() -> None:
    p = RetryPolicy(attempts=5, backoff=0.5, max_delay=8.0)
    assert p.delay(0, answer("2")) == 2.0
    assert p.delay(0, answer("600")) == 8.0  # capped
    for attempt, top in ((0, 0.5), (1, 1.0), (3, 4.0), (6, 8.0)):
        d = p.delay(attempt, None)
        assert top / 2 <= d <= top
