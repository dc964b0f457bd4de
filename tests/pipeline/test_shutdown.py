"""Graceful SIGTERM: the worker stops taking jobs, finishes or gives back the running ones, loses nothing."""

from __future__ import annotations

import signal

import pytest
from pipeline_helpers import submit_long_jobs_until_running

from genqueue.client import Client

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("lanes", ["1", "2"])  # one batching loop, or two lanes (worker/engine/lanes.py)
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
