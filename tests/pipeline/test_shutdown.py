"""Graceful SIGTERM: the worker stops taking jobs, finishes or gives back the running ones, loses nothing."""

from __future__ import annotations

import signal

import pytest
from pipeline_helpers import submit_long_jobs_until_running

from genqueue.client import Client

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("lanes", ["1", "2"])  # one batching loop, or two lanes (worker/genqueue_worker/engine/lanes.py)
def test_sigterm_finishes_or_gives_back_every_job(lone_stack, lanes: str) -> None:  # type: ignore[no-untyped-def]
    lone = lone_stack({"GENQUEUE_WORKER_CONCURRENCY": "8", "GENQUEUE_TEXT_LANES": lanes})
    stack = lone.stack
    (beat,) = stack.worker_heartbeats()
    assert beat["lanes"]["tiny-lm@1"] == int(lanes)  # the text engine runs the lanes asked for
    with Client(stack.base_url, lone.secret, timeout=60) as c:
        ids = submit_long_jobs_until_running(c, 24, n=4)
        worker = stack.procs[1]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
        after_stop = {i: c.get(i)["status"] for i in ids}
        # Nothing is left half-done: each job finished, or is back in the queue for another worker.
        assert set(after_stop.values()) <= {"succeeded", "queued"}, after_stop
        stack.procs.pop(1)
        stack._spawn("worker-2", ["worker"])  # a fresh worker picks up what was given back
        for i in ids:
            assert c.wait(i, timeout=120)["status"] == "succeeded"
        assert all(c.get(i)["attempts"] == 1 for i in ids if after_stop[i] == "succeeded")


def test_sigterm_gives_back_what_the_grace_does_not_cover(lone_stack) -> None:  # type: ignore[no-untyped-def]
    import time

    # One row at a time: the worker holds 32 long jobs (one per message) and works through them one by one, so
    # a shutdown that waited for them all would take a while even on a fast machine.
    lone = lone_stack({"GENQUEUE_WORKER_CONCURRENCY": "32", "GENQUEUE_TEXT_MAX_RUNNING": "1",
                       "GENQUEUE_WORKER_HELD_JOBS": "32",
                       "GENQUEUE_SHUTDOWN_GRACE_S": "0"})
    stack = lone.stack
    with Client(stack.base_url, lone.secret, timeout=60) as c:
        ids = submit_long_jobs_until_running(c, 48, n=1)
        worker = stack.procs[1]
        t0 = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
        stopped_in = time.monotonic() - t0
        jobs = {i: c.get(i) for i in ids}
        after_stop = {i: j["status"] for i, j in jobs.items()}
        assert set(after_stop.values()) <= {"succeeded", "queued"}, after_stop
        # Jobs that were running were given back rather than waited for: queued again, the start of the attempt
        # they gave back still on record. (Which jobs run at the signal cannot be read beforehand: a list taken
        # a moment earlier may all have finished by then.)
        given_back = [i for i, j in jobs.items() if j["status"] == "queued" and j["started_at"] is not None]
        assert given_back, after_stop
        stack.procs.pop(1)
        stack._spawn("worker-2", ["worker"])
        for i in ids:
            done = c.wait(i, timeout=120)
            assert done["status"] == "succeeded" and done["attempts"] == 1  # a given-back attempt is not counted
    assert stopped_in < 30, stopped_in


def test_api_shutdown_answers_held_waits_with_the_job_as_it_stands(lone_stack) -> None:  # type: ignore[no-untyped-def]
    import concurrent.futures
    import time

    import httpx

    lone = lone_stack(workers=0)  # no worker: jobs stay queued
    stack = lone.stack
    auth = {"Authorization": f"Bearer {lone.secret}"}
    job = httpx.post(stack.base_url + "/v1/jobs", json={"model": "tiny-lm", "input": {"prompt": "x"}},
                     headers=auth, timeout=30).json()

    def held_wait() -> httpx.Response:
        return httpx.get(f"{stack.base_url}/v1/jobs/{job['id']}", headers={**auth, "Prefer": "wait=60"}, timeout=90)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        waits = [pool.submit(held_wait) for _ in range(4)]
        time.sleep(1.0)  # the requests are held
        t0 = time.monotonic()
        stack.procs[0].send_signal(signal.SIGTERM)
        answers = [w.result(timeout=60) for w in waits]
    # Answered with the job as it stands (a 200), not cancelled with a 500 after the 10 s graceful timeout.
    assert [a.status_code for a in answers] == [200] * 4, [a.text[:100] for a in answers]
    assert all(a.json()["status"] == "queued" for a in answers)
    assert time.monotonic() - t0 < 9
    stack.procs[0].wait(30)  # it exits (uvicorn re-raises the SIGTERM it handled, so the code is -15)
