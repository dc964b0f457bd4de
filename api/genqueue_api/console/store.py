"""The console's read side: queue counters, the items a moderator holds, the reasons they gave lately.
Every write goes through genqueue.review.state (via genqueue_api.services.review)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from genqueue.db.models import AuditEvent, JobImage, Review
from genqueue.enums import ReviewStatus

# The audit actions that are a moderator's decision (escalating counts: it is a judgement made on the item).
DECISION_ACTIONS = ("approve", "reject", "escalate")


@dataclass(frozen=True)
class Counters:
    pending: int  # waiting for a moderator (claimed or not)
    flagged: int  # of those, the ones the pre-screen flagged
    escalated: int  # waiting for an admin
    decided_today_me: int  # decisions since 00:00 UTC by this key
    decided_today_all: int  # decisions since 00:00 UTC by every moderator and admin (not the system)


def start_of_day(now: dt.datetime) -> dt.datetime:
    return now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def counters(session: Session, key_id: str, now: dt.datetime) -> Counters:
    by_status = dict(session.execute(  # type: ignore[arg-type]
        select(Review.status, func.count()).where(
            Review.status.in_([ReviewStatus.pending.value, ReviewStatus.escalated.value])).group_by(Review.status)
    ).all())
    flagged = session.execute(select(func.count()).select_from(Review).where(
        Review.status == ReviewStatus.pending.value, Review.flag_score > 0)).scalar_one()
    # The day's decisions are read from the audit trail, so that decisions made through the HTTP API count too.
    mine, everyone = session.execute(
        select(func.count().filter(AuditEvent.actor == key_id), func.count()).where(
            AuditEvent.at >= start_of_day(now), AuditEvent.action.in_(DECISION_ACTIONS),
            AuditEvent.actor.is_not(None))
    ).one()
    return Counters(pending=int(by_status.get(ReviewStatus.pending.value, 0)), flagged=int(flagged),
                    escalated=int(by_status.get(ReviewStatus.escalated.value, 0)),
                    decided_today_me=int(mine), decided_today_all=int(everyone))


def held(session: Session, key_id: str, now: dt.datetime, limit: int = 100) -> list[str]:
    """Job ids this key holds under a live claim, in queue order (a reloaded page shows them again)."""
    return list(session.execute(
        select(Review.job_id).where(Review.claimed_by == key_id, Review.claim_expires_at > now,
                                    Review.status.in_([ReviewStatus.pending.value, ReviewStatus.escalated.value]))
        .order_by(Review.flag_score.desc(), Review.queued_at, Review.job_id).limit(limit)
    ).scalars())


def recent_reasons(session: Session, key_id: str, limit: int = 5) -> list[str]:
    """The distinct reasons this key gave for its latest rejections, newest first."""
    rows = session.execute(
        select(AuditEvent.reason).where(AuditEvent.actor == key_id, AuditEvent.action == "reject",
                                        AuditEvent.reason.is_not(None))
        .order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(50)
    ).scalars()
    out: list[str] = []
    for reason in rows:
        if reason and reason not in out:
            out.append(reason)
        if len(out) == limit:
            break
    return out


def image(session: Session, job_id: str, index: int) -> JobImage | None:
    return session.get(JobImage, (job_id, index))
