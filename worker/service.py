"""The worker's SQL: claim a job under a lease, write its outcome in one transaction, renew leases.

Every write is guarded by (status, leased_by), so a duplicate delivery or a job canceled meanwhile never
produces a second output (DESIGN.md invariant 1: at-least-once delivery, exactly-once effect).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from genqueue.db import counters
from genqueue.db.models import AuditEvent, Job, JobImage, Review, utcnow
from genqueue.enums import JobStatus, ReviewStatus


@dataclass(frozen=True)
class Claimed:
    job_id: str
    model: str
    model_version: str
    kind: str
    input: dict[str, Any]
    priority: int
    review_policy: str
    created_at: dt.datetime
    started_at: dt.datetime
    attempts: int


@dataclass(frozen=True)
class Skipped:
    reason: str  # "missing" | "finished" | "leased_elsewhere" | "poison"


def claim(session: Session, job_id: str, worker_id: str, lease_s: float, max_attempts: int) -> Claimed | Skipped:
    now = utcnow()
    job = session.get(Job, job_id)
    if job is None:
        return Skipped("missing")
    if job.status not in (JobStatus.queued.value, JobStatus.running.value):
        return Skipped("finished")
    if job.status == JobStatus.running.value and job.lease_expires_at and job.lease_expires_at > now:
        return Skipped("leased_elsewhere")
    if job.attempts >= max_attempts:
        # Each earlier delivery died without writing an outcome: stop the loop here.
        res = session.execute(
            update(Job).where(Job.id == job_id, Job.status.in_([JobStatus.queued.value, JobStatus.running.value]))
            .values(status=JobStatus.failed.value, error_code="poison_job",
                    error_message=f"the job was delivered {job.attempts} times without finishing; giving up",
                    finished_at=now, lease_expires_at=None)
        )
        session.commit()
        return Skipped("poison" if res.rowcount else "finished")  # type: ignore[attr-defined]
    started = job.started_at or now
    attempts = job.attempts  # read before the UPDATE, which synchronizes the loaded object
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempts == attempts,
               or_(Job.status == JobStatus.queued.value,
                   and_(Job.status == JobStatus.running.value, Job.lease_expires_at <= now)))
        .values(status=JobStatus.running.value, leased_by=worker_id, attempts=attempts + 1,
                lease_expires_at=now + dt.timedelta(seconds=lease_s), started_at=started)
    )
    session.commit()
    if not res.rowcount:  # type: ignore[attr-defined]
        return Skipped("leased_elsewhere")
    return Claimed(job_id=job.id, model=job.model, model_version=job.model_version, kind=job.kind, input=job.input,
                   priority=job.priority, review_policy=job.review_policy, created_at=job.created_at,
                   started_at=started, attempts=attempts + 1)


def _owned(job_id: str, worker_id: str) -> Any:
    return and_(Job.id == job_id, Job.status == JobStatus.running.value, Job.leased_by == worker_id)


def record_success(
    session: Session,
    job_id: str,
    worker_id: str,
    output: dict[str, Any],
    metrics: dict[str, Any],
    images: Sequence[tuple[bytes, int, int, str]],
    review: ReviewStatus,
    flags: list[dict[str, Any]],
) -> bool:
    """Output, images, review row and status=succeeded in ONE transaction. False if no longer ours."""
    now = utcnow()
    res = session.execute(
        update(Job).where(_owned(job_id, worker_id))
        .values(status=JobStatus.succeeded.value, output=output, metrics=metrics, finished_at=now,
                lease_expires_at=None, error_code=None, error_message=None)
    )
    if not res.rowcount:  # type: ignore[attr-defined]
        session.rollback()
        return False
    for i, (data, w, h, fmt) in enumerate(images):
        session.add(JobImage(job_id=job_id, index=i, format=fmt, width=w, height=h, data=data))
    feed_seq = counters.reserve(session, "feed_seq") if review is ReviewStatus.not_required else None
    session.add(Review(job_id=job_id, status=review.value, flags=flags,
                       flag_score=max((f["score"] for f in flags), default=0.0), feed_seq=feed_seq,
                       decided_at=now if feed_seq is not None else None))
    session.add(AuditEvent(job_id=job_id, actor=None, action="prescreen", from_status=None, to_status=review.value,
                           reason=",".join(f["rule"] for f in flags) or None))
    session.commit()
    return True


def record_failure(session: Session, job_id: str, worker_id: str, code: str, message: str,
                   metrics: dict[str, Any] | None = None) -> bool:
    res = session.execute(
        update(Job).where(_owned(job_id, worker_id))
        .values(status=JobStatus.failed.value, error_code=code, error_message=message, finished_at=utcnow(),
                lease_expires_at=None, metrics=metrics or {})
    )
    session.commit()
    return bool(res.rowcount)  # type: ignore[attr-defined]


def release(session: Session, job_id: str, worker_id: str) -> bool:
    """Give a job back (graceful shutdown): queued again, and this attempt does not count."""
    res = session.execute(
        update(Job).where(_owned(job_id, worker_id))
        .values(status=JobStatus.queued.value, leased_by=None, lease_expires_at=None, attempts=Job.attempts - 1)
    )
    session.commit()
    return bool(res.rowcount)  # type: ignore[attr-defined]


def renew_leases(session: Session, job_ids: Sequence[str], worker_id: str, lease_s: float) -> None:
    if not job_ids:
        return
    session.execute(
        update(Job).where(Job.id.in_(list(job_ids)), Job.leased_by == worker_id, Job.status == JobStatus.running.value)
        .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease_s))
    )
    session.commit()


def canceled_among(session: Session, job_ids: Sequence[str]) -> list[str]:
    if not job_ids:
        return []
    rows = session.execute(
        select(Job.id).where(Job.id.in_(list(job_ids)), Job.status == JobStatus.canceled.value)
    ).scalars()
    return list(rows)
