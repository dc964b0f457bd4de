"""A worker killed in the middle of a chunk (SIGKILL, no goodbye) loses nothing: leases expire, the reconciler
re-publishes in chunks, another worker finishes every job, and each job's outcome is written exactly once."""

from __future__ import annotations

import signal

import pytest
from pipeline_helpers import submit_long_jobs_until_running
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
