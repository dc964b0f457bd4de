"""The dict-based client of the genqueue HTTP API (httpx). genqueue.sdk has typed sync and async clients
with retries; this one answers plain dicts."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx

from genqueue.sdk.errors import GenqueueError

TERMINAL = {"succeeded", "failed", "canceled"}
_RETRYABLE = {500, 502, 503, 504}  # what a restarting API or its proxy answers while a wait is held


def verify_webhook(payload: bytes | str, headers: Mapping[str, str], secret: str) -> Any:
    """Check a webhook genqueue sent (Standard Webhooks: ``webhook-id``, ``webhook-timestamp``,
    ``webhook-signature``) against the deployment's webhook secret and return the parsed event.

    ``payload`` must be the request body exactly as received. Raises ``WebhookVerificationError`` (from
    `standardwebhooks`) when the signature does not match, a header is missing, or the timestamp is more
    than five minutes away from now (a replay). The event's ``webhook-id`` stays the same on every retry:
    use it to drop repeats."""
    try:
        from genqueue.webhooks.signing import verify
    except ImportError as e:
        raise ImportError(f"verify_webhook needs the [webhooks] extra (pip install 'genqueue[webhooks]'): {e}") from None

    return verify(payload, headers, secret)


class Client:
    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {api_key}"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _check(self, r: httpx.Response) -> Any:
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                raise GenqueueError(r.status_code, err["code"], err["message"], err.get("details"))
            except (ValueError, KeyError, TypeError):
                raise GenqueueError(r.status_code, "http_error", r.text[:200]) from None
        return r.json()

    def submit(self, model: str, input: dict[str, Any], *, priority: int = 5, review: str = "auto",
               metadata: dict[str, Any] | None = None, webhook: str | None = None,
               idempotency_key: str | None = None, wait: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "input": input, "priority": priority, "review": review}
        if metadata is not None:
            body["metadata"] = metadata
        if webhook is not None:
            body["webhook"] = webhook
        headers = {}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        if wait:
            headers["Prefer"] = f"wait={wait}"
        # The server may hold the answer for `wait` seconds: allow that on top of the usual read timeout.
        kwargs: dict[str, Any] = {"timeout": (self._http.timeout.read or 30.0) + wait} if wait else {}
        return self._check(self._http.post("/v1/jobs", json=body, headers=headers, **kwargs))  # type: ignore[no-any-return]

    def submit_bulk(self, jobs: list[dict[str, Any]], minimal: bool = False) -> list[dict[str, Any]]:
        """With ``minimal`` each job comes back as its id, model and status (``Prefer: return=minimal``)."""
        headers = {"Prefer": "return=minimal"} if minimal else None
        return self._check(self._http.post("/v1/jobs/bulk", json={"jobs": jobs}, headers=headers))["data"]  # type: ignore[no-any-return]

    def get(self, job_id: str) -> dict[str, Any]:
        return self._check(self._http.get(f"/v1/jobs/{job_id}"))  # type: ignore[no-any-return]

    def list_jobs(self, **params: Any) -> dict[str, Any]:
        return self._check(self._http.get("/v1/jobs", params={k: v for k, v in params.items() if v is not None}))  # type: ignore[no-any-return]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._check(self._http.post(f"/v1/jobs/{job_id}/cancel"))  # type: ignore[no-any-return]

    def models(self) -> list[dict[str, Any]]:
        return self._check(self._http.get("/v1/models"))["data"]  # type: ignore[no-any-return]

    # Moderation (moderator and admin keys).
    def claim(self, limit: int = 20, model: str | None = None, flagged_first: bool = True) -> list[dict[str, Any]]:
        body = {"limit": limit, "model": model, "flagged_first": flagged_first}
        return self._check(self._http.post("/v1/review/claim", json=body))["data"]  # type: ignore[no-any-return]

    def decide(self, job_id: str, decision: str, reason: str | None = None) -> dict[str, Any]:
        body = {"decision": decision, "reason": reason}
        return self._check(self._http.post(f"/v1/review/{job_id}/decision", json=body))  # type: ignore[no-any-return]

    def release(self, job_id: str) -> dict[str, Any]:
        return self._check(self._http.post(f"/v1/review/{job_id}/release"))  # type: ignore[no-any-return]

    def history(self, job_id: str) -> list[dict[str, Any]]:
        return self._check(self._http.get(f"/v1/review/{job_id}/history"))["data"]  # type: ignore[no-any-return]

    # Delivery (client keys: their own jobs; admin keys: everyone's).
    def feed(self, after: str | None = None, limit: int = 50) -> dict[str, Any]:
        """One page of the feed: ``{"data": [...], "next_cursor": ...}``; call again with
        ``after=next_cursor`` to follow it."""
        params: dict[str, Any] = {"limit": limit}
        if after:
            params["after"] = after
        return self._check(self._http.get("/v1/feed", params=params))  # type: ignore[no-any-return]

    def image(self, job_id: str, n: int = 0) -> tuple[bytes, str]:
        r = self._http.get(f"/v1/jobs/{job_id}/images/{n}")
        if r.status_code >= 400:
            self._check(r)
        return r.content, r.headers.get("content-type", "")

    def wait(self, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the job is terminal. Each request is a long poll (``Prefer: wait``): the server
        answers as soon as the job ends, so waiting costs a request per 30 s, not a poll loop."""
        deadline = time.monotonic() + timeout
        job = self.get(job_id)
        while job["status"] not in TERMINAL:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout:.0f}s")
            hold = max(1, min(30, int(left)))
            try:
                job = self._check(self._http.get(f"/v1/jobs/{job_id}", headers={"Prefer": f"wait={hold}"},
                                                 timeout=hold + 30.0))
            except (httpx.TransportError, GenqueueError) as e:
                # An API restarting or behind a proxy that is: the job is safe in SQL, so keep waiting. Client
                # errors (404, 401, ...) are answers, not outages.
                if isinstance(e, GenqueueError) and e.status not in _RETRYABLE:
                    raise
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        return job
