"""Job repository: the SQL the API runs for jobs. No HTTP, no validation here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from genqueue.db import bulk, counters
from genqueue.db.hints import unindexed
from genqueue.db.models import Job, JobImage, Review
from genqueue.review import policy as review_policy


def insert_jobs(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """One multi-row INSERT for any number of jobs; ``created_seq`` comes from one counter bump."""
    if not rows:
        return
    first = counters.reserve(session, "job_seq", len(rows))
    for i, row in enumerate(rows):
        row["created_seq"] = first + i
    bulk.insert_rows(session, Job, rows)


def get(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def get_owned(session: Session, job_id: str, owner_id: str | None) -> Job | None:
    """``owner_id`` None means an admin: any job."""
    job = session.get(Job, job_id)
    if job is None or (owner_id is not None and job.owner_id != owner_id):
        return None
    return job


def get_many(session: Session, job_ids: Sequence[str], owner_id: str | None,
             statuses: Sequence[str] | None = None) -> dict[str, Job]:
    """The jobs of these ids (``owner_id`` None: anyone's; ``statuses``: only those), by id."""
    q = select(Job).where(Job.id.in_(list(job_ids)))
    if owner_id is not None:
        q = q.where(unindexed(Job.owner_id) == owner_id)
    if statuses is not None:
        q = q.where(unindexed(Job.status).in_(list(statuses)))
    return {j.id: j for j in session.execute(q).scalars()}


def existing(session: Session, job_ids: Sequence[str], owner_id: str | None) -> set[str]:
    """Which of these ids are jobs (of ``owner_id``, unless None); reads the ids only."""
    q = select(Job.id).where(Job.id.in_(list(job_ids)))
    if owner_id is not None:
        q = q.where(unindexed(Job.owner_id) == owner_id)
    return set(session.execute(q).scalars())


def reviews_for(session: Session, job_ids: Sequence[str]) -> dict[str, Review]:
    if not job_ids:
        return {}
    rows = session.execute(select(Review).where(Review.job_id.in_(list(job_ids)))).scalars()
    return {r.job_id: r for r in rows}


def by_idempotency_keys(session: Session, owner_id: str, keys: Sequence[str]) -> dict[str, Job]:
    if not keys:
        return {}
    rows = session.execute(
        select(Job).where(Job.owner_id == owner_id, Job.idempotency_key.in_(list(keys)))
    ).scalars()
    return {j.idempotency_key: j for j in rows if j.idempotency_key}


def list_jobs(
    session: Session,
    owner_id: str | None,
    *,
    status: str | None,
    review: str | None,
    model: str | None,
    limit: int,
    before_seq: int | None,
) -> list[Job]:
    q = select(Job)
    if owner_id is not None:
        q = q.where(Job.owner_id == owner_id)
    if status:
        q = q.where(Job.status == status)
    if model:
        name, _, version = model.partition("@")
        q = q.where(Job.model == name)
        if version:
            q = q.where(Job.model_version == version)
    if review:
        q = q.join(Review, Review.job_id == Job.id, isouter=True).where(review_policy.status_filter(review))
    if before_seq is not None:
        q = q.where(Job.created_seq < before_seq)
    q = q.order_by(Job.created_seq.desc()).limit(limit)
    return list(session.execute(q).scalars())


def image(session: Session, job_id: str, index: int) -> JobImage | None:
    return session.get(JobImage, (job_id, index))
