"""Faults of the worker process itself, each on SQLite and on PostgreSQL: SIGKILL in the middle of a batch,
SIGTERM while a job is verified running, and a poison input that kills every worker that starts it."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from faults import (
    SLOW_MODEL_ENV,
    exactly_once,
    long_jobs,
    running_now,
    short_jobs,
    spawn_worker,
    statuses,
    until,
    wait_consuming,
    wait_final,
)
from sqlalchemy import select

from genqueue.db.models import Job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


def _attempts(f, ids: list[str]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with f.db.session() as s:
        return {str(i): int(a) for i, a in s.execute(select(Job.id, Job.attempts).where(Job.id.in_(ids)))}


def test_sigkill_mid_batch_then_restart(fault_stack, database: str) -> None:  # type: ignore[no-untyped-def]
    # The slowed model keeps each job running for seconds, so the jobs read as held are still held when the
    # signal lands: on a fast machine the real one finished them between the two reads.
    f = fault_stack({"GENQUEUE_WORKER_CONCURRENCY": "8", **SLOW_MODEL_ENV})
    with f.client() as c:
        ids = [j["id"] for j in c.submit_bulk(long_jobs(c, 8, "kill", candidates=2))]
        assert until(lambda: running_now(f.db, ids), 60), "no job started"
        worker = f.stack.procs.pop(1)
        held = running_now(f.db, ids)
        assert held, "a job must be running when the signal arrives"
        worker.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        worker.wait(30)
        spawn_worker(f.stack, "worker-again")
        # Recovered: every job the dead worker held has been claimed again (or finished).
        until(lambda: all(a >= 2 for i, a in _attempts(f, list(held)).items()
                          if statuses(f.db, [i])[i] != "succeeded"), 60, every=0.2)
        recovered_in = time.monotonic() - killed_at
        wait_final(f.db, ids, 120)
    exactly_once(f.db, ids, recover_s=recovered_in)
    attempts = _attempts(f, ids)
    assert held and any(attempts[i] >= 2 for i in held), (held, attempts)  # the kill did interrupt jobs
    print(f"recovered in {recovered_in:.1f}s after the SIGKILL ({database})")


def test_sigterm_with_a_job_verified_running(fault_stack, database: str) -> None:  # type: ignore[no-untyped-def]
    # No grace: the worker gives back what is running instead of waiting for it.
    f = fault_stack({"GENQUEUE_WORKER_CONCURRENCY": "8", "GENQUEUE_SHUTDOWN_GRACE_S": "0", **SLOW_MODEL_ENV})
    with f.client() as c:
        ids = [j["id"] for j in c.submit_bulk(long_jobs(c, 8, "term", candidates=2))]
        assert until(lambda: running_now(f.db, ids), 60), "no job started"
        worker = f.stack.procs[1]
        held = running_now(f.db, ids)
        worker.send_signal(signal.SIGTERM)
        assert held, "a job must be running when the signal arrives"
        assert worker.wait(60) == 0
        f.stack.procs.remove(worker)
        after = statuses(f.db, ids)
        # Nothing half-done: each job finished, or is queued again for another worker.
        assert set(after.values()) <= {"succeeded", "queued"}, after
        assert any(after[i] == "queued" for i in held), (held, after)  # given back, not waited for
        spawn_worker(f.stack, "worker-again")
        wait_final(f.db, ids, 120)
    exactly_once(f.db, ids)
    assert set(_attempts(f, ids).values()) == {1}  # a given-back attempt is not counted


def test_a_poison_job_fails_alone_through_real_crashes(fault_stack, database: str) -> None:  # type: ignore[no-untyped-def]
    marker = "POISON-7f3a"
    poison_env = {"PYTHONPATH": str(Path(__file__).parent / "poison"), "GENQUEUE_TEST_POISON_MARKER": marker}
    f = fault_stack({"GENQUEUE_JOB_MAX_ATTEMPTS": "2", **poison_env}, workers=1)
    crashes: list[int] = []
    workers = [f.stack.procs[1]]
    stop = threading.Event()

    def supervise() -> None:
        # What systemd or Kubernetes would do: start the worker again each time it dies.
        while not stop.is_set():
            if workers[-1].poll() is not None:
                crashes.append(workers[-1].returncode)
                spawn_worker(f.stack, f"worker-{len(crashes)}")
                workers.append(f.stack.procs[-1])
            stop.wait(0.1)

    sup = threading.Thread(target=supervise, daemon=True)
    sup.start()
    try:
        with f.client() as c:
            # The poison in the middle of a bulk, so that neighbours share its message, and more jobs after it.
            items = short_jobs(3, "before") + [{"model": "tiny-lm", "input": {"prompt": marker, "seed": 1}}]
            items += short_jobs(3, "after")
            ids = [j["id"] for j in c.submit_bulk(items)]
            poison = ids[3]
            later = [c.submit("tiny-lm", it["input"])["id"] for it in short_jobs(4, "single")]
            st = wait_final(f.db, ids + later, 120)
    finally:
        stop.set()
        sup.join(10)
    assert st[poison] == "failed", st
    with f.db.session() as s:
        row = s.get(Job, poison)
        assert row is not None and row.error_code == "poison_job", (row.error_code if row else None)
    assert len(crashes) >= 2 and set(crashes) == {-signal.SIGKILL}, crashes  # it killed a worker each time
    neighbours = [i for i in ids + later if i != poison]
    exactly_once(f.db, [poison], allowed=("failed",))
    exactly_once(f.db, neighbours)  # they all succeeded, each written once
    assert max(_attempts(f, neighbours).values()) >= 2  # though some died with the poison job on the way
    wait_consuming(f.stack, [workers[-1].pid])  # the last worker started still serves
