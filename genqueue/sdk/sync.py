"""The synchronous client: one pooled httpx.Client, retries with backoff, typed answers."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import httpx

from genqueue.sdk import _core
from genqueue.sdk.errors import GenqueueConnectionError
from genqueue.sdk.models import ItemError, Job, JobPage, job_or_error


class Client:
    """``Client(url, api_key)``; both default to GENQUEUE_URL and GENQUEUE_API_KEY. Safe to share between
    threads (httpx.Client pools connections)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 retry: _core.RetryPolicy | None = None, max_connections: int = 32,
                 transport: httpx.BaseTransport | None = None) -> None:
        url, key = _core.resolve(base_url, api_key)
        self.retry = retry or _core.RetryPolicy()
        self._http = httpx.Client(base_url=url, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {key}"},
                                  limits=httpx.Limits(max_connections=max_connections,
                                                      max_keepalive_connections=max_connections))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call with the retry policy: 429, 502-504 and connection errors are tried again (after the
        server's Retry-After when it sent one); any other answer is returned as it is."""
        last: str = ""
        for attempt in range(self.retry.attempts):
            response: httpx.Response | None = None
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as e:
                last = f"{e.__class__.__name__}: {e}"
            else:
                if response.status_code not in _core.RETRY_STATUSES:
                    return response
                if attempt == self.retry.attempts - 1:
                    return response
            if attempt < self.retry.attempts - 1:
                time.sleep(self.retry.delay(attempt, response))
        raise GenqueueConnectionError(f"cannot reach {self._http.base_url}: {last}")

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return _core.check(self.request(method, path, **kwargs))

    # Jobs.
    def submit(self, model: str, input: dict[str, Any], *, priority: int = 5, review: str = "auto",
               metadata: dict[str, Any] | None = None, webhook: str | None = None,
               webhook_events: list[str] | None = None, idempotency_key: str | None = None,
               wait: int | None = None) -> Job:
        """Submit one job. Without an ``idempotency_key`` one is made up, so that a retried request never
        makes a second job; ``wait`` holds the answer up to that many seconds until the job ends."""
        body = _core.job_body(model, input, priority, review, metadata, webhook, webhook_events)
        headers = _core.submit_headers(idempotency_key or _core.new_key(), wait)
        timeout = (self._http.timeout.read or 30.0) + wait if wait else httpx.USE_CLIENT_DEFAULT
        return Job.model_validate(self._json("POST", "/v1/jobs", json=body, headers=headers, timeout=timeout))

    def submit_bulk(self, jobs: list[dict[str, Any]], minimal: bool = False) -> list[Job | ItemError]:
        """Up to 1,000 job requests (the bodies of ``submit``, each with an optional ``idempotency_key``) in
        one call; each item is a Job or the ItemError that refused it, in order. With ``minimal`` a Job has
        only its id, model and status (``Prefer: return=minimal``): a lighter answer when the id is all
        the caller keeps."""
        data = self._json("POST", "/v1/jobs/bulk", json={"jobs": _core.with_keys(jobs)},
                          headers=_core.MINIMAL if minimal else None)["data"]
        return [job_or_error(item) for item in data]

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._json("GET", f"/v1/jobs/{job_id}"))

    def lookup(self, job_ids: list[str], ended_only: bool = False) -> tuple[list[Job], list[str]]:
        """Up to 1,000 jobs by id in one call: (the jobs found, the ids that are none of the caller's). With
        ``ended_only`` only the jobs that have ended come back (the others are in neither list)."""
        data = self._json("POST", "/v1/jobs/lookup", json={"ids": job_ids, "ended_only": ended_only})
        return [Job.model_validate(j) for j in data["data"]], list(data["missing"])

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    def list_jobs(self, *, status: str | None = None, model: str | None = None, limit: int = 50,
                  cursor: str | None = None) -> JobPage:
        params = {k: v for k, v in {"status": status, "model": model, "limit": limit, "cursor": cursor}.items()
                  if v is not None}
        return JobPage.model_validate(self._json("GET", "/v1/jobs", params=params))

    def image(self, job_id: str, n: int = 0) -> bytes:
        r = self.request("GET", f"/v1/jobs/{job_id}/images/{n}")
        if r.status_code >= 400:
            raise _core.error_of(r)
        return r.content

    # Admin keys: one key's quotas (PUT /v1/keys/{id}/quota); a limit of None goes back to the default.
    def quota(self, key_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/keys/{key_id}/quota")  # type: ignore[no-any-return]

    def set_quota(self, key_id: str, **limits: int | None) -> dict[str, Any]:
        """``requests_per_s``, ``jobs_per_min``, ``jobs_in_flight``: a number (0: no limit) or None."""
        return self._json("PUT", f"/v1/keys/{key_id}/quota", json=limits)  # type: ignore[no-any-return]

    def models(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/models")["data"]  # type: ignore[no-any-return]

    # Waiting.
    def wait(self, job_id: str, timeout: float = 300.0) -> Job:
        """The job once it has ended. Each request is a long poll (``Prefer: wait``): the server answers as
        soon as the job ends. Raises TimeoutError when it is still running after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        job = self.get(job_id)
        while not job.done:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout:.0f}s")
            hold = _core.hold(deadline)
            r = self.request("GET", f"/v1/jobs/{job_id}", headers={"Prefer": f"wait={hold}"}, timeout=hold + 30.0)
            if r.status_code >= 500:  # an API restarting: the job is safe in SQL, so keep waiting
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                continue
            job = Job.model_validate(_core.check(r))
        return job

    def as_completed(self, job_ids: Iterable[str], timeout: float = 300.0, concurrency: int = 16) -> Iterator[Job]:
        """Yield each job as it ends, whichever ends first; ``concurrency`` long polls are held at once."""
        deadline = time.monotonic() + timeout
        todo = iter(job_ids)
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            running: set[Future[Job]] = set()

            def fill() -> None:
                for job_id in todo:
                    running.add(pool.submit(self.wait, job_id, max(0.0, deadline - time.monotonic())))
                    if len(running) >= concurrency:
                        return

            fill()
            try:
                while running:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for f in finished:
                        running.discard(f)
                        yield f.result()
                    fill()
            finally:
                for f in running:
                    f.cancel()

    def wait_all(self, job_ids: Iterable[str], timeout: float = 300.0, concurrency: int = 16) -> list[Job]:
        """Every job once it has ended, in the order of ``job_ids``."""
        ids = list(job_ids)
        done = {j.id: j for j in self.as_completed(ids, timeout, concurrency)}
        return [done[i] for i in ids]
