"""Review repository: the read side of reviews (items with their jobs, the audit trail, the feed). Every
write goes through genqueue.review.state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from genqueue.db.models import AuditEvent, Job, Review


def items(session: Session, job_ids: Sequence[str]) -> list[tuple[Review, Job]]:
    """Reviews with their jobs, in the order of ``job_ids``."""
    if not job_ids:
        return []
    rows = session.execute(
        select(Review, Job).join(Job, Job.id == Review.job_id).where(Review.job_id.in_(list(job_ids)))
        .execution_options(populate_existing=True)
    ).all()
    found = {r.job_id: (r, j) for r, j in rows}
    return [found[i] for i in job_ids if i in found]


def history(session: Session, job_id: str) -> list[AuditEvent]:
    return list(session.execute(
        select(AuditEvent).where(AuditEvent.job_id == job_id).order_by(AuditEvent.at, AuditEvent.id)
    ).scalars())


def feed(session: Session, owner_id: str | None, after: int, limit: int) -> list[tuple[Review, Job]]:
    """Deliverable outputs past ``after`` in feed order; ``owner_id`` None means every owner's."""
    q: Any = (select(Review, Job).join(Job, Job.id == Review.job_id)
              .where(Review.feed_seq.is_not(None), Review.feed_seq > after))
    if owner_id is not None:
        q = q.where(Job.owner_id == owner_id)
    return [(r, j) for r, j in session.execute(q.order_by(Review.feed_seq).limit(limit)).all()]
