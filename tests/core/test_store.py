"""The worker's SQL under leases: at-least-once delivery, exactly one outcome per job (real SQL)."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from genqueue import jobstate as service
from genqueue.db import counters
from genqueue.db.models import Job, JobImage, Review, utcnow
from genqueue.db.session import Database
from genqueue.enums import Role
from genqueue_api.auth import create_key
from genqueue_api.store import jobs as store


def _job(db: Database) -> str:
    with db.session() as s:
        key, _ = create_key(s, "t", Role.client)
        jid = str(uuid.uuid4())
        store.insert_jobs(s, [{"id": jid, "owner_id": key.id, "model": "m", "model_version": "1", "kind": "text",
                               "status": "queued", "priority": 5, "input": {"prompt": "x"}, "metadata_": {},
                               "review_policy": "auto", "webhook_events": [], "metrics": {}, "attempts": 0}])
        s.commit()
    return jid


def _claim(s: Session, jid: str, worker: str, lease: float, attempts: int) -> service.Claimed | service.Skipped:
    return service.claim_many(s, [jid], worker, lease, attempts)[jid]


def _success(s: Session, jid: str, worker: str, output: dict, images: list) -> bool:  # type: ignore[type-arg]
    return service.write_outcomes(s, worker, [service.Success(jid, output, {}, images, [])])[jid]


def test_claim_lease_and_duplicate_delivery(db: Database) -> None:
    jid = _job(db)
    with db.session() as s:
        c = _claim(s, jid, "w1", 60, 3)
        assert isinstance(c, service.Claimed) and c.attempts == 1
    with db.session() as s:
        assert _claim(s, jid, "w2", 60, 3) == service.Skipped("leased_elsewhere")
    with db.session() as s:
        assert _success(s, jid, "w2", {"texts": ["no"]}, []) is False
        assert _success(s, jid, "w1", {"texts": ["yes"]}, [(b"png", 1, 1, "png")]) is True
        # A late duplicate from the same worker cannot write a second outcome either.
        assert _success(s, jid, "w1", {"texts": ["again"]}, []) is False
    with db.session() as s:
        job = s.get(Job, jid)
        assert job is not None and job.status == "succeeded" and job.output == {"texts": ["yes"]}
        assert s.scalar(select(func.count()).select_from(Review).where(Review.job_id == jid)) == 1
        assert s.scalar(select(func.count()).select_from(JobImage).where(JobImage.job_id == jid)) == 1
        assert _claim(s, jid, "w3", 60, 3) == service.Skipped("finished")


def test_expired_lease_is_reclaimed_and_poison_job_fails(db: Database) -> None:
    jid = _job(db)
    for attempt in (1, 2):
        with db.session() as s:
            c = _claim(s, jid, f"w{attempt}", 60, 2)
            assert isinstance(c, service.Claimed) and c.attempts == attempt
            # The worker "dies": its lease runs out.
            s.execute(update(Job).where(Job.id == jid).values(lease_expires_at=utcnow() - dt.timedelta(seconds=1)))
            s.commit()
    with db.session() as s:
        assert _claim(s, jid, "w3", 60, 2) == service.Skipped("poison")
        job = s.get(Job, jid)
        assert job is not None and job.status == "failed" and job.error_code == "poison_job"


def test_canceled_job_is_skipped_and_release_gives_back(db: Database) -> None:
    jid = _job(db)
    with db.session() as s:
        assert isinstance(_claim(s, jid, "w1", 60, 3), service.Claimed)
        assert service.write_outcomes(s, "w1", [service.Release(jid)])[jid] is True
        job = s.get(Job, jid)
        assert job is not None and job.status == "queued" and job.attempts == 0
        assert service.cancel(s, jid) is True
        s.commit()
    with db.session() as s:
        assert _claim(s, jid, "w1", 60, 3) == service.Skipped("finished")
        assert service.canceled_among(s, [jid]) == [jid]


def test_counters_are_consecutive(db: Database) -> None:
    with db.session() as s:
        a = counters.reserve(s, "test_seq", 5)
        b = counters.reserve(s, "test_seq", 1)
        s.commit()
    assert b == a + 5


def test_group_claim_and_group_commit(db: Database) -> None:
    ids = [_job(db) for _ in range(4)]
    with db.session() as s:
        claimed = service.claim_many(s, [*ids, "no-such-job"], "w1", 60, 3)
    assert all(isinstance(claimed[i], service.Claimed) for i in ids)
    assert claimed["no-such-job"] == service.Skipped("missing")
    with db.session() as s:
        service.cancel(s, ids[1])  # canceled by its owner while running
        s.commit()
    outcomes: list[service.Outcome] = [
        service.Success(ids[0], {"texts": ["a"]}, {}, []),
        service.Success(ids[1], {"texts": ["b"]}, {}, [(b"x", 1, 1, "png")]),
        service.Failure(ids[2], "nan_output", "NaN in logits"),
        service.Success(ids[3], {"texts": ["d"]}, {}, []),
    ]
    with db.session() as s:
        written = service.write_outcomes(s, "w1", outcomes)
    assert written == {ids[0]: True, ids[1]: False, ids[2]: True, ids[3]: True}
    with db.session() as s:
        jobs = {i: s.get(Job, i) for i in ids}
        assert [jobs[i].status for i in ids] == ["succeeded", "canceled", "failed", "succeeded"]  # type: ignore[union-attr]
        assert jobs[ids[1]].output is None  # type: ignore[union-attr]
        assert s.scalar(select(func.count()).select_from(JobImage).where(JobImage.job_id == ids[1])) == 0
        reviews = {r.job_id: r for r in s.execute(select(Review).where(Review.job_id.in_(ids))).scalars()}
        assert set(reviews) == {ids[0], ids[3]}
        assert reviews[ids[3]].feed_seq == reviews[ids[0]].feed_seq + 1  # type: ignore[operator]


def test_the_review_filter_agrees_with_the_job_object(db: Database) -> None:
    from genqueue_api.services.jobs import outs

    # Ended jobs only: a queued one would stay in the session's database for other tests' reconcilers to find.
    ids = {name: _job(db) for name in ("succeeded", "failed", "canceled")}
    with db.session() as s:
        for name in ids:
            s.execute(update(Job).where(Job.id == ids[name]).values(status=name))
        s.commit()
        shown = {o.id: o.review.status.value for o in outs(s, [s.get(Job, i) for i in ids.values()])}  # type: ignore[misc]
        for review in ("pending", "not_required"):
            listed = {j.id for j in store.list_jobs(s, None, status=None, review=review, model=None, limit=100,
                                                    before_seq=None)}
            mine = {i for i in ids.values() if i in listed}
            assert mine == {i for i, v in shown.items() if v == review}, (review, shown)
        # Succeeded without a review row yet (the row is written with the output): pending, as the job shows.
        assert shown[ids["failed"]] == shown[ids["canceled"]] == "not_required" and shown[ids["succeeded"]] == "pending"
