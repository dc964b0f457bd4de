"""The asynchronous client: the sync client's calls on one pooled httpx.AsyncClient."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx

from genqueue.sdk import _core
from genqueue.sdk.errors import GenqueueConnectionError
from genqueue.sdk.models import ItemError, Job, JobPage, job_or_error


class AsyncClient:
    """``async with AsyncClient(url, api_key) as gq: job = await gq.submit(...)``."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 retry: _core.RetryPolicy | None = None, max_connections: int = 64,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        url, key = _core.resolve(base_url, api_key)
        self.retry = retry or _core.RetryPolicy()
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout, transport=transport,
                                       headers={"Authorization": f"Bearer {key}"},
                                       limits=httpx.Limits(max_connections=max_connections,
                                                           max_keepalive_connections=max_connections))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call with the retry policy (see genqueue.sdk.Client.request)."""
        last = ""
        for attempt in range(self.retry.attempts):
            response: httpx.Response | None = None
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as e:
                last = f"{e.__class__.__name__}: {e}"
            else:
                if response.status_code not in _core.RETRY_STATUSES or attempt == self.retry.attempts - 1:
                    return response
            if attempt < self.retry.attempts - 1:
                await asyncio.sleep(self.retry.delay(attempt, response))
        raise GenqueueConnectionError(f"cannot reach {self._http.base_url}: {last}")

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return _core.check(await self.request(method, path, **kwargs))

    async def submit(self, model: str, input: dict[str, Any], *, priority: int = 5, review: str = "auto",
                     metadata: dict[str, Any] | None = None, webhook: str | None = None,
                     webhook_events: list[str] | None = None, idempotency_key: str | None = None,
                     wait: int | None = None) -> Job:
        body = _core.job_body(model, input, priority, review, metadata, webhook, webhook_events)
        headers = _core.submit_headers(idempotency_key or _core.new_key(), wait)
        timeout = (self._http.timeout.read or 30.0) + wait if wait else httpx.USE_CLIENT_DEFAULT
        return Job.model_validate(await self._json("POST", "/v1/jobs", json=body, headers=headers, timeout=timeout))

    async def submit_bulk(self, jobs: list[dict[str, Any]], minimal: bool = False) -> list[Job | ItemError]:
        data = (await self._json("POST", "/v1/jobs/bulk", json={"jobs": _core.with_keys(jobs)},
                                 headers=_core.MINIMAL if minimal else None))["data"]
        return [job_or_error(item) for item in data]

    async def get(self, job_id: str) -> Job:
        return Job.model_validate(await self._json("GET", f"/v1/jobs/{job_id}"))

    async def lookup(self, job_ids: list[str], ended_only: bool = False) -> tuple[list[Job], list[str]]:
        """Up to 1,000 jobs by id in one call: (the jobs found, the ids that are none of the caller's). With
        ``ended_only`` only the jobs that have ended come back (the others are in neither list)."""
        data = await self._json("POST", "/v1/jobs/lookup", json={"ids": job_ids, "ended_only": ended_only})
        return [Job.model_validate(j) for j in data["data"]], list(data["missing"])

    async def cancel(self, job_id: str) -> Job:
        return Job.model_validate(await self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    async def list_jobs(self, *, status: str | None = None, model: str | None = None, limit: int = 50,
                        cursor: str | None = None) -> JobPage:
        params = {k: v for k, v in {"status": status, "model": model, "limit": limit, "cursor": cursor}.items()
                  if v is not None}
        return JobPage.model_validate(await self._json("GET", "/v1/jobs", params=params))

    async def image(self, job_id: str, n: int = 0) -> bytes:
        r = await self.request("GET", f"/v1/jobs/{job_id}/images/{n}")
        if r.status_code >= 400:
            raise _core.error_of(r)
        return r.content

    # Admin keys: one key's quotas (PUT /v1/keys/{id}/quota); a limit of None goes back to the default.
    async def quota(self, key_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/v1/keys/{key_id}/quota")  # type: ignore[no-any-return]

    async def set_quota(self, key_id: str, **limits: int | None) -> dict[str, Any]:
        """``requests_per_s``, ``jobs_per_min``, ``jobs_in_flight``: a number (0: no limit) or None."""
        return await self._json("PUT", f"/v1/keys/{key_id}/quota", json=limits)  # type: ignore[no-any-return]

    async def models(self) -> list[dict[str, Any]]:
        return (await self._json("GET", "/v1/models"))["data"]  # type: ignore[no-any-return]

    async def wait(self, job_id: str, timeout: float = 300.0) -> Job:
        """The job once it has ended (long polls); TimeoutError when it is still running after ``timeout``."""
        deadline = time.monotonic() + timeout
        job = await self.get(job_id)
        while not job.done:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout:.0f}s")
            hold = _core.hold(deadline)
            r = await self.request("GET", f"/v1/jobs/{job_id}", headers={"Prefer": f"wait={hold}"},
                                   timeout=hold + 30.0)
            if r.status_code >= 500:
                await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                continue
            job = Job.model_validate(_core.check(r))
        return job

    async def as_completed(self, job_ids: Iterable[str], timeout: float = 300.0,
                           concurrency: int = 64) -> AsyncIterator[Job]:
        """Yield each job as it ends; ``concurrency`` long polls are held at once."""
        deadline = time.monotonic() + timeout
        todo = iter(job_ids)
        running: set[asyncio.Task[Job]] = set()

        def fill() -> None:
            for job_id in todo:
                running.add(asyncio.ensure_future(self.wait(job_id, max(0.0, deadline - time.monotonic()))))
                if len(running) >= concurrency:
                    return

        fill()
        try:
            while running:
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for t in finished:
                    running.discard(t)
                    yield t.result()
                fill()
        finally:
            for t in running:
                t.cancel()

    async def wait_all(self, job_ids: Iterable[str], timeout: float = 300.0, concurrency: int = 64) -> list[Job]:
        ids = list(job_ids)
        done = {j.id: j async for j in self.as_completed(ids, timeout, concurrency)}
        return [done[i] for i in ids]
