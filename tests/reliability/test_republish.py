"""Crash recovery in SQL. A crashed job whose re-publish was delivered and then lost (a worker took it
while SQL was unreachable: its claim failed and the message was acked) is published again once that re-publish is stale, instead of
staying `running` under an expired lease for good. A retry on its last attempt is left for the worker to
claim and run alone."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import update

from genqueue import jobstate
from genqueue.db.models import Job, utcnow
from genqueue.db.session import Database
from genqueue.enums import Role
from genqueue_api.auth import create_key
from genqueue_api.store import jobs as store


def test_a_lost_republish_of_a_crashed_job_goes_out_again(db: Database) -> None:
    now = utcnow()
    job_id = str(uuid.uuid4())
    with db.session() as s:
        key, _ = create_key(s, "republish", Role.client)
        store.insert_jobs(s, [{"id": job_id, "owner_id": key.id, "model": "m", "model_version": "1", "kind": "text",
                               "status": "queued", "priority": 5, "input": {"prompt": "x"}, "metadata_": {},
                               "review_policy": "auto", "webhook_events": [], "metrics": {}, "attempts": 0}])
        # Its worker died; the lease ran out 60 s ago and it was published again 30 s ago, to a worker that
        # could not claim it.
        s.execute(update(Job).where(Job.id == job_id).values(
            status="running", leased_by="dead-worker", attempts=1, lease_expires_at=now - dt.timedelta(seconds=60),
            published_at=now - dt.timedelta(seconds=30)))
        s.commit()

        def due(stale_s: float) -> set[str]:
            return {r[0] for r in jobstate.due_for_publish(s, now, unpublished_grace_s=2, limit=10_000,
                                                           stale_before=now - dt.timedelta(seconds=stale_s))}

        assert job_id not in due(600)  # not again while that publish is fresh
        assert job_id in due(10)  # and again once it is stale: its message may be gone
        s.execute(update(Job).where(Job.id == job_id).values(status="canceled"))
        s.commit()


def test_a_retry_on_its_last_attempt_is_left_for_the_worker_to_run_alone(db: Database) -> None:
    now = utcnow()
    ids = [str(uuid.uuid4()) for _ in range(3)]
    with db.session() as s:
        key, _ = create_key(s, "last", Role.client)
        store.insert_jobs(s, [{"id": i, "owner_id": key.id, "model": "m", "model_version": "1", "kind": "text",
                               "status": "queued", "priority": 5, "input": {"prompt": "x"}, "metadata_": {},
                               "review_policy": "auto", "webhook_events": [], "metrics": {}, "attempts": 0}
                              for i in ids])
        # ids[0] died with its worker twice already (2 of 3 attempts); ids[1] once; ids[2] is fresh.
        for i, n in ((ids[0], 2), (ids[1], 1)):
            s.execute(update(Job).where(Job.id == i).values(status="running", leased_by="dead", attempts=n,
                                                            lease_expires_at=now - dt.timedelta(seconds=1)))
        s.commit()
        got = jobstate.claim_many(s, ids, "w", 60, 3, hold_last=True)
        assert got[ids[0]] == jobstate.Skipped("last_attempt")
        assert isinstance(got[ids[1]], jobstate.Claimed) and isinstance(got[ids[2]], jobstate.Claimed)
        alone = jobstate.claim_many(s, [ids[0]], "w", 60, 3)[ids[0]]  # the worker's claim of it, alone
        assert isinstance(alone, jobstate.Claimed) and alone.attempts == 3
        s.execute(update(Job).where(Job.id.in_(ids)).values(status="canceled"))
        s.commit()
