"""Both SDK clients ride out 429 (honouring Retry-After) and connection errors, and their made-up
idempotency keys make a retried submit safe: against the real API, over real Redis and SQL."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from genqueue.db.models import Job
from genqueue.sdk import AsyncClient, Client, GenqueueConnectionError, GenqueueError, ItemError, RetryPolicy
from genqueue.stack import free_port

JOB = {"prompt": "hi", "max_new_tokens": 2}


class Recording(httpx.HTTPTransport):
    """The real transport, noting each answer's status."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.statuses.append(response.status_code)
        return response


class AsyncRecording(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.statuses.append(response.status_code)
        return response


def limit_to_one_request_per_second(api) -> None:  # type: ignore[no-untyped-def]
    with Client(api.url, api.keys["admin"]) as admin:
        assert admin.set_quota(api.key_ids["client"], requests_per_s=1)["requests_per_s"] == 1
        assert admin.quota(api.key_ids["client"])["overrides"] == {"requests_per_s": 1}


def count_jobs(api) -> int:  # type: ignore[no-untyped-def]
    with api.db.session() as s:
        return s.query(Job).filter(Job.owner_id == api.key_ids["client"]).count()


def test_sync_client_waits_out_429_with_retry_after(api_server) -> None:  # type: ignore[no-untyped-def]
    api = api_server()
    limit_to_one_request_per_second(api)
    rec = Recording()
    with Client(api.url, api.keys["client"], transport=rec) as c:
        time.sleep(1 - time.time() % 1)  # the start of a second: the next two submits share it
        t0 = time.monotonic()
        first = c.submit("tiny-lm", JOB)
        second = c.submit("tiny-lm", JOB)
        took = time.monotonic() - t0
        assert rec.statuses == [201, 429, 201]
        assert took >= 0.9  # it slept for Retry-After (1 s) rather than hammering the API
        assert first.status == second.status == "queued" and first.id != second.id
        # Bulk answers are typed: a Job or the ItemError that refused the item.
        time.sleep(1.05)
        out = c.submit_bulk([{"model": "tiny-lm", "input": JOB}, {"model": "nope", "input": JOB}])
        assert out[0].status == "queued"  # type: ignore[union-attr]
        assert isinstance(out[1], ItemError) and out[1].code == "unknown_model"
        # An error that is an answer is raised at once, in the API's shape.
        with pytest.raises(GenqueueError) as e:
            c.get("no-such-job")
        assert e.value.status == 404 and e.value.code == "not_found"
    assert count_jobs(api) == 3


def test_async_client_waits_out_429_with_retry_after(api_server) -> None:  # type: ignore[no-untyped-def]
    api = api_server()
    limit_to_one_request_per_second(api)
    rec = AsyncRecording()

    async def go() -> float:
        async with AsyncClient(api.url, api.keys["client"], transport=rec) as c:
            await asyncio.sleep(1 - time.time() % 1)
            t0 = time.monotonic()
            jobs = [await c.submit("tiny-lm", JOB) for _ in range(2)]
            assert len({j.id for j in jobs}) == 2
            found, missing = await c.lookup([jobs[0].id, "no-such-job"])
            assert [j.id for j in found] == [jobs[0].id] and missing == ["no-such-job"]
            return time.monotonic() - t0

    took = asyncio.run(go())
    assert rec.statuses[:3] == [201, 429, 201]
    assert took >= 0.9
    assert count_jobs(api) == 2


def test_a_retried_submit_makes_one_job(api_server) -> None:  # type: ignore[no-untyped-def]
    """The answer to the first attempt is lost (the API stored the job, the client saw an error): the
    retry carries the same idempotency key, so the API answers with the same job."""
    api = api_server()

    class LoseFirstAnswer(httpx.HTTPTransport):
        lost = False

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            if request.method == "POST" and not self.lost:
                self.lost = True
                response.close()
                raise httpx.ReadError("connection reset after the request was sent")
            return response

    with Client(api.url, api.keys["client"], transport=LoseFirstAnswer(),
                retry=RetryPolicy(attempts=3, backoff=0.01)) as c:
        job = c.submit("tiny-lm", JOB)
    assert count_jobs(api) == 1
    with api.db.session() as s:
        assert s.get(Job, job.id) is not None


def test_unreachable_api_is_one_error_after_the_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, "gq_x", retry=RetryPolicy(attempts=3, backoff=0.01)) as c, \
            pytest.raises(GenqueueConnectionError) as e:
        c.get("j")
    assert e.value.code == "unreachable" and url in e.value.message

    async def go() -> None:
        async with AsyncClient(url, "gq_x", retry=RetryPolicy(attempts=2, backoff=0.01)) as c:
            await c.get("j")

    with pytest.raises(GenqueueConnectionError):
        asyncio.run(go())
