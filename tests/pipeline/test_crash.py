"""A worker killed in the middle of a chunk (SIGKILL, no goodbye) loses nothing: leases expire, the reconciler
re-publishes in chunks, another worker finishes every job, and each job's outcome is written exactly once."""

from __future__ import annotations

import signal

import pytest
from pipeline_helpers import submit_long_jobs_until_running
from reliability_tally import record
from sqlalchemy import func, select

from genqueue.client import Client
from genqueue.db.models import AuditEvent

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_killed_worker_jobs_are_finished_by_another(lone_stack, database: str) -> None:  # type: ignore[no-untyped-def]
    lone = lone_stack({"GENQUEUE_LEASE_SECONDS": "2", "GENQUEUE_RECONCILE_INTERVAL_S": "0.5",
                       "GENQUEUE_REPUBLISH_AFTER_S": "3", "GENQUEUE_WORKER_CONCURRENCY": "8"}, database=database)
    stack, db = lone.stack, lone.db
    with Client(stack.base_url, lone.secret, timeout=60) as c:
        ids = submit_long_jobs_until_running(c, 24, n=8)
        worker = stack.procs.pop(1)
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
        running_at_kill = [i for i in ids if c.get(i)["status"] == "running"]
        assert running_at_kill, "the kill should interrupt at least one job"
        stack._spawn("worker-2", ["worker"])
        final = {i: c.wait(i, timeout=120) for i in ids}
        assert all(j["status"] == "succeeded" for j in final.values())
        assert all(final[i]["attempts"] == 2 for i in running_at_kill)
    with db.session() as s:
        # Exactly one outcome write per job, however often it was delivered: every successful write adds one
        # prescreen audit event in its transaction, and no key would stop a second write from adding another.
        writes = dict(s.execute(select(AuditEvent.job_id, func.count()).where(
            AuditEvent.job_id.in_(ids), AuditEvent.action == "prescreen").group_by(AuditEvent.job_id)).all())  # type: ignore[arg-type]
    assert writes == {i: 1 for i in ids}


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_dead_worker_is_noticed_from_its_heartbeat_and_its_jobs_rerun_within_30_s(lone_stack, database: str) -> None:  # type: ignore[no-untyped-def]
    import time

    from genqueue.db.models import Job

    # Default settings: leases of 120 s, so only the missing heartbeat can bring the jobs back this soon.
    lone = lone_stack(workers=2, database=database)
    stack, db = lone.stack, lone.db
    with Client(stack.base_url, lone.secret, timeout=60) as c:
        # Two chunks of 32 jobs, each a worker's full share (it takes no second message while it holds 32).
        ids = submit_long_jobs_until_running(c, 64, n=4)
        victim = stack.procs[1]
        victim_id = next(str(h["id"]) for h in stack.worker_heartbeats() if h.get("pid") == victim.pid)
        # The second worker may claim its chunk a moment after the first one's jobs start running.
        deadline = time.monotonic() + 60
        while True:
            with db.session() as s:
                held = dict(s.execute(select(Job.id, Job.leased_by).where(  # type: ignore[arg-type]
                    Job.id.in_(ids), Job.status == "running")).all())
            if len(set(held.values())) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        mine = [i for i, w in held.items() if w == victim_id]
        others = [i for i, w in held.items() if w != victim_id]
        assert mine and others, held  # both workers hold jobs of the bulk
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        victim.wait(30)
        stack.procs.remove(victim)
        while True:
            with db.session() as s:
                rerun = s.scalar(select(func.count()).select_from(Job).where(Job.id.in_(mine), Job.attempts >= 2))
            if rerun == len(mine) or time.monotonic() - killed_at > 60:
                break
            time.sleep(0.25)
        recovered_in = time.monotonic() - killed_at
        assert rerun == len(mine) and recovered_in < 30, (rerun, len(mine), recovered_in)
        final = {i: c.wait(i, timeout=120) for i in ids}
    with db.session() as s:  # outcome writes, counted as in the test above
        writes = dict(s.execute(select(AuditEvent.job_id, func.count()).where(
            AuditEvent.job_id.in_(ids), AuditEvent.action == "prescreen").group_by(AuditEvent.job_id)).all())  # type: ignore[arg-type]
    ended = [i for i in ids if final[i]["status"] in ("succeeded", "failed", "canceled")]
    record("recovery", database, fault="worker SIGKILL, default settings (heartbeat)", submitted=len(ids),
           final=len(ended), lost=len(ids) - len(ended), duplicated=sum(writes.get(i, 0) > 1 for i in ids),
           recover_s=round(recovered_in, 1), interrupted=len(mine))
    assert all(j["status"] == "succeeded" for j in final.values())
    assert writes == {i: 1 for i in ids}
    # The worker that kept beating kept its jobs: none of them ran twice.
    assert all(final[i]["attempts"] == 1 for i in others)
