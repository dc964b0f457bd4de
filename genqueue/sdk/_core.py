"""What the sync and async clients share: request bodies, answers, and the retry policy."""

from __future__ import annotations

import email.utils
import os
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from genqueue.sdk.errors import GenqueueError

# 429: over a quota; 503: the queue is unavailable or the API is restarting; 502/504: a proxy in front of
# one. Submits carry idempotency keys, so retrying any of them cannot create a second job.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
DEFAULT_URL = "http://127.0.0.1:8000"
MINIMAL = {"Prefer": "return=minimal"}  # bulk answers of ids, models and statuses only


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; between them the server's Retry-After when it sent one, otherwise
    ``backoff * 2**n`` seconds (with jitter), never more than ``max_delay``."""

    attempts: int = 6
    backoff: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        hinted = retry_after(response) if response is not None else None
        if hinted is not None:
            return min(hinted, self.max_delay)
        return min(self.max_delay, self.backoff * 2**attempt) * (0.5 + random.random() / 2)


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds: either delta-seconds or an HTTP date (RFC 9110)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def resolve(base_url: str | None, api_key: str | None) -> tuple[str, str]:
    url = base_url or os.environ.get("GENQUEUE_URL") or DEFAULT_URL
    key = api_key or os.environ.get("GENQUEUE_API_KEY")
    if not key:
        raise ValueError("no API key: pass api_key= or set GENQUEUE_API_KEY")
    return url.rstrip("/"), key


def check(r: httpx.Response) -> Any:
    """The answer's JSON, or a GenqueueError in the API's error shape."""
    if r.status_code >= 400:
        raise error_of(r)
    return r.json()


def error_of(r: httpx.Response) -> GenqueueError:
    hinted = retry_after(r)
    try:
        err = r.json()["error"]
        return GenqueueError(r.status_code, err["code"], err["message"], err.get("details"), hinted)
    except (ValueError, KeyError, TypeError):
        return GenqueueError(r.status_code, "http_error", r.text[:200], retry_after=hinted)


def job_body(model: str, input: dict[str, Any], priority: int, review: str, metadata: dict[str, Any] | None,
             webhook: str | None, webhook_events: list[str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": input, "priority": priority, "review": review}
    if metadata is not None:
        body["metadata"] = metadata
    if webhook is not None:
        body["webhook"] = webhook
    if webhook_events is not None:
        body["webhook_events"] = webhook_events
    return body


def with_keys(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bulk items, each with an idempotency key (a fresh one where the caller gave none), so that the whole
    request can be retried safely."""
    return [j if j.get("idempotency_key") else {**j, "idempotency_key": new_key()} for j in jobs]


def new_key() -> str:
    return f"sdk-{uuid.uuid4()}"


def submit_headers(idempotency_key: str, wait: int | None) -> dict[str, str]:
    headers = {"Idempotency-Key": idempotency_key}
    if wait:
        headers["Prefer"] = f"wait={wait}"
    return headers


def hold(deadline: float) -> int:
    """Seconds of the next long poll: what is left, between 1 and 30."""
    return max(1, min(30, int(deadline - time.monotonic())))
