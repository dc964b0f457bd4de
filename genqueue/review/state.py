"""The one owner of review state: every transition of a review row goes through here, for the worker (a
fresh output) and the API (moderators' claims and decisions) alike, and each writes its audit event.

States (``reviews.status``, as the Job object shows them) and transitions::

    (output written) ─► not_required | approved (by the system) | pending
    pending ──claim──► pending + claim (claimed_by, claim_expires_at) ──approve/reject──► approved/rejected
                                                       │ ──escalate──► escalated
                                                       │ ──release / lease runs out──► pending
    escalated ──(admins only) claim──► escalated + claim ──approve/reject──► approved/rejected

A claim is a lease, not a state of its own: an item with an expired claim is claimable again. In the audit
trail it shows as the pseudo-state ``claimed``.

Concurrency: claims pick rows with ``SELECT … FOR UPDATE SKIP LOCKED`` inside one UPDATE on PostgreSQL, so
concurrent moderators never wait on, nor take, each other's rows; SQLite has one writer at a time, and the
same single UPDATE … RETURNING statement is atomic there. Every other transition reads the row and writes it
back guarded by the ``version`` it read: a write that lost a race changes nothing and is reported as a
conflict instead of overwriting.

An output enters the delivery feed (``feed_seq``) in the transaction that makes it deliverable. The number
comes from a counter row that stays locked until that transaction commits, so numbers become visible in
increasing order and a follower of the feed never skips one that commits late.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, case, insert, or_, select, update
from sqlalchemy.orm import Session

from genqueue.db import bulk, counters
from genqueue.db.models import ApiKey, AuditEvent, Job, Review, utcnow
from genqueue.db.picking import picked
from genqueue.enums import ReviewStatus, Role
from genqueue.review import policy
from genqueue.review.policy import SYSTEM, ReviewConfig
from genqueue.settings import get_settings
from genqueue.webhooks import outbox

DECISIONS = {"approve": ReviewStatus.approved, "reject": ReviewStatus.rejected, "escalate": ReviewStatus.escalated}
DECIDED = (ReviewStatus.approved.value, ReviewStatus.rejected.value, ReviewStatus.not_required.value)
CLAIMED = "claimed"  # the audit trail's name for "pending or escalated, under a live claim"


@dataclass(frozen=True)
class Actor:
    id: str | None  # the API key's id; None for the system
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == Role.admin.value

    @classmethod
    def of(cls, key: ApiKey) -> Actor:
        return cls(key.id, key.name, key.role)


SYSTEM_ACTOR = Actor(None, SYSTEM, SYSTEM)


class ReviewError(Exception):
    """A transition that is not allowed. ``kind`` is one of not_found, conflict, forbidden, invalid."""

    def __init__(self, kind: str, code: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message


def _audit(job_id: str, actor: Actor, action: str, frm: str | None, to: str | None, reason: str | None,
           at: dt.datetime) -> dict[str, Any]:
    return {"job_id": job_id, "actor": actor.id, "actor_name": actor.name, "action": action,
            "from_status": frm, "to_status": to, "reason": reason, "at": at}


def review_info(status: str, flags: list[dict[str, Any]] | None = None, decided_by: str | None = None,
                reason: str | None = None) -> dict[str, Any]:
    return {"status": status, "flags": flags or [], "decided_by": decided_by, "reason": reason}


# ---------------------------------------------------------------- fresh outputs (the worker's transaction)

@functools.cache
def _job_rows_statement(full: bool) -> Any:
    # Built once, the ids bound at each call: constructing it cost more than running it (as in jobstate).
    j: Any = Job.__table__
    k: Any = ApiKey.__table__
    cols = [j.c.id, j.c.model, j.c.review_policy, j.c.webhook, j.c.webhook_events, k.c.review_policy.label("key_policy")]
    if full:  # what a webhook's payload carries (genqueue.webhooks.outbox.payload)
        cols += [j.c.model_version, j.c.kind, j.c.status, j.c["metadata"].label("metadata_"), j.c.output,
                 j.c.error_code, j.c.error_message]
    return select(*cols).join(k, k.c.id == j.c.owner_id, isouter=True).where(j.c.id.in_(bindparam("ids", expanding=True)))


def _job_rows(session: Session, job_ids: Sequence[str], full: bool = True) -> dict[str, Any]:
    rows = session.connection().execute(_job_rows_statement(full), {"ids": list(job_ids)})
    return {r.id: r for r in rows}


def record_outputs(session: Session, succeeded: Sequence[tuple[str, list[dict[str, Any]]]],
                   failed: Sequence[str] = (), now: dt.datetime | None = None,
                   config: ReviewConfig | None = None) -> dict[str, ReviewStatus]:
    """In the transaction that stores outputs: the review row of each succeeded job (from its pre-screen
    flags and the review policy), its audit event, its place in the feed when deliverable, and the
    ``job.*`` webhooks of succeeded and failed jobs. Returns each succeeded job's review status."""
    if not succeeded and not failed:
        return {}
    now = now or utcnow()
    config = config or ReviewConfig.from_settings(get_settings())
    jobs = _job_rows(session, [j for j, _ in succeeded] + list(failed), full=False)
    # A webhook's payload needs the whole row (its output, above all): read it only for the jobs that have one.
    hooked = [job_id for job_id, job in jobs.items() if job.webhook]
    if hooked:
        jobs.update(_job_rows(session, hooked))
    statuses: dict[str, ReviewStatus] = {}
    reviews: list[dict[str, Any]] = []
    audits: list[dict[str, Any]] = []
    hooks: list[tuple[Any, str, dict[str, Any], bool]] = []
    for job_id, flags in succeeded:
        job = jobs[job_id]
        start = policy.initial(job.review_policy, policy.resolve_auto(config, job.model, job.key_policy), flags)
        status = start.status.value
        statuses[job_id] = start.status
        deliverable = status in (ReviewStatus.not_required.value, ReviewStatus.approved.value)
        decided_by = SYSTEM if start.by_system else None
        rules = ",".join(f["rule"] for f in flags) or None
        reviews.append({"job_id": job_id, "model": job.model, "status": status, "flags": flags,
                        "flag_score": max((float(f["score"]) for f in flags), default=0.0), "version": 0,
                        "queued_at": now, "decided_by": decided_by, "decided_at": now if deliverable else None,
                        "feed_seq": None})
        why = rules or ("clean output, approved by the flagged policy" if start.by_system else None)
        audits.append(_audit(job_id, SYSTEM_ACTOR, "prescreen", None, status, why, now))
        hooks.append((job, "job.succeeded", review_info(status, flags, decided_by), deliverable))
    for job_id in failed:
        hooks.append((jobs[job_id], "job.failed", review_info(ReviewStatus.not_required.value), False))
    # Last, so that the feed counter row stays locked for as short a time as possible.
    deliverable_rows = [r for r in reviews if r["decided_at"] is not None]
    if deliverable_rows:
        first = counters.reserve(session, "feed_seq", len(deliverable_rows))
        for i, r in enumerate(deliverable_rows):
            r["feed_seq"] = first + i
    if reviews:
        bulk.insert_rows(session, Review, reviews)
        bulk.insert_rows(session, AuditEvent, audits)
    outbox.enqueue(session, hooks, now)
    return statuses


def record_canceled(session: Session, job_ids: Sequence[str], now: dt.datetime | None = None) -> None:
    """In the transaction that cancels jobs: their ``job.canceled`` webhooks."""
    now = now or utcnow()
    jobs = _job_rows(session, job_ids)
    outbox.enqueue(session, [(j, "job.canceled", review_info(ReviewStatus.not_required.value), False)
                             for j in jobs.values()], now)


# ---------------------------------------------------------------- claims

def _claim_live(now: dt.datetime) -> Any:
    return (Review.claimed_by.is_not(None)) & (Review.claim_expires_at > now)


def expire_claims(session: Session, now: dt.datetime | None = None) -> list[str]:
    """Return every item whose claim ran out to the queue (audited as done by the system)."""
    now = now or utcnow()
    expired = (Review.claimed_by.is_not(None)) & (Review.claim_expires_at <= now)
    rows = session.execute(
        update(Review).where(picked(Review.job_id, select(Review.job_id).where(expired)), expired)
        .values(claimed_by=None, claim_expires_at=None, version=Review.version + 1)
        .returning(Review.job_id, Review.status).execution_options(synchronize_session=False)
    ).all()
    if rows:
        session.execute(insert(AuditEvent), [
            _audit(r.job_id, SYSTEM_ACTOR, "expire", CLAIMED, r.status, "the claim's lease ran out", now) for r in rows])
    return [r.job_id for r in rows]


def claim(session: Session, actor: Actor, limit: int, *, model: str | None = None, flagged_first: bool = True,
          lease_s: float = 600.0, now: dt.datetime | None = None) -> list[str]:
    """Claim up to ``limit`` items for ``actor`` under a lease; returns their job ids in queue order.
    Moderators get pending items; admins also (and first) escalated ones. The caller commits."""
    now = now or utcnow()
    expire_claims(session, now)
    statuses = [ReviewStatus.pending.value]
    order: list[Any] = []
    if actor.is_admin:
        statuses.append(ReviewStatus.escalated.value)
        order.append(case((Review.status == ReviewStatus.escalated.value, 0), else_=1))
    if flagged_first:
        order.append(Review.flag_score.desc())
    order += [Review.queued_at, Review.job_id]
    free = Review.status.in_(statuses) & or_(Review.claimed_by.is_(None), Review.claim_expires_at <= now)
    pick = select(Review.job_id).where(free)
    if model:
        pick = pick.where(Review.model == model.partition("@")[0])
    pick = pick.order_by(*order).limit(limit)
    rows = session.execute(
        update(Review).where(picked(Review.job_id, pick), free)
        .values(claimed_by=actor.id, claim_expires_at=now + dt.timedelta(seconds=lease_s),
                version=Review.version + 1)
        .returning(Review.job_id, Review.status).execution_options(synchronize_session=False)
    ).all()
    if rows:
        session.execute(insert(AuditEvent), [
            _audit(r.job_id, actor, "claim", r.status, CLAIMED, None, now) for r in rows])
    ids = {r.job_id for r in rows}
    if not ids:
        return []
    ordered = session.execute(select(Review.job_id).where(Review.job_id.in_(ids)).order_by(*order)).scalars()
    return list(ordered)


def _read(session: Session, job_id: str) -> Review:
    review = session.execute(
        select(Review).where(Review.job_id == job_id).execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if review is None:
        if session.get(Job, job_id) is None:
            raise ReviewError("not_found", "not_found", "job not found")
        raise ReviewError("conflict", "not_in_review", f"job {job_id} has no output under review")
    return review


def _write(session: Session, review: Review, **values: Any) -> None:
    """The version-guarded write: a row changed since it was read is left alone, and the caller told."""
    res = session.execute(
        update(Review).where(Review.job_id == review.job_id, Review.version == review.version)
        .values(version=Review.version + 1, **values).execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        raise ReviewError("conflict", "concurrent_change",
                          f"the review of job {review.job_id} changed meanwhile; read it again")


def _holder_check(review: Review, actor: Actor, now: dt.datetime, *, admin_may_skip: bool) -> None:
    live = review.claimed_by is not None and review.claim_expires_at is not None and review.claim_expires_at > now
    if review.claimed_by == actor.id and actor.id is not None:
        if not live:
            raise ReviewError("conflict", "claim_expired",
                              f"your claim on job {review.job_id} expired; claim it again")
        return
    if admin_may_skip and actor.is_admin:
        return
    if live:
        raise ReviewError("conflict", "claimed_by_other", f"job {review.job_id} is claimed by another moderator")
    raise ReviewError("conflict", "claim_required", f"claim job {review.job_id} first (POST /v1/review/claim)")


@dataclass(frozen=True)
class Decided:
    job_id: str
    model: str
    status: str
    queued_at: dt.datetime
    decided_at: dt.datetime


def decide(session: Session, actor: Actor, job_id: str, decision: str, reason: str | None,
           now: dt.datetime | None = None) -> Decided:
    """approve, reject or escalate one item. The caller commits."""
    now = now or utcnow()
    to = DECISIONS.get(decision)
    if to is None:
        raise ReviewError("invalid", "validation_error", "decision must be approve, reject or escalate")
    reason = (reason or "").strip() or None
    if to is ReviewStatus.rejected and reason is None:
        raise ReviewError("invalid", "reason_required", "a rejection needs a reason")
    review = _read(session, job_id)
    if review.status in DECIDED:
        raise ReviewError("conflict", "already_decided", f"job {job_id} is already {review.status}")
    if review.status == ReviewStatus.escalated.value:
        if not actor.is_admin:
            raise ReviewError("forbidden", "forbidden", "escalated items are decided by admins")
        if to is ReviewStatus.escalated:
            raise ReviewError("conflict", "already_escalated", f"job {job_id} is already escalated")
    _holder_check(review, actor, now, admin_may_skip=True)
    held = review.claimed_by is not None and review.claim_expires_at is not None and review.claim_expires_at > now
    frm = CLAIMED if held else review.status
    final = to is not ReviewStatus.escalated
    _write(session, review, status=to.value, claimed_by=None, claim_expires_at=None, reason=reason,
           decided_by=actor.id if final else None, decided_at=now if final else None)
    session.execute(insert(AuditEvent), [_audit(job_id, actor, decision, frm, to.value, reason, now)])
    if final:
        job = _job_rows(session, [job_id])[job_id]
        info = review_info(to.value, review.flags, actor.id, reason)
        approved = to is ReviewStatus.approved
        outbox.enqueue(session, [(job, "review.approved" if approved else "review.rejected", info, approved)], now)
        if approved:  # last: the feed counter stays locked until commit
            seq = counters.reserve(session, "feed_seq")
            session.execute(update(Review).where(Review.job_id == job_id).values(feed_seq=seq)
                            .execution_options(synchronize_session=False))
    return Decided(job_id, review.model, to.value, review.queued_at, now)


def release(session: Session, actor: Actor, job_id: str, now: dt.datetime | None = None) -> None:
    """Give a claim back (its holder, or an admin). The caller commits."""
    now = now or utcnow()
    review = _read(session, job_id)
    if review.status in DECIDED:
        raise ReviewError("conflict", "already_decided", f"job {job_id} is already {review.status}")
    if review.claimed_by is None:
        raise ReviewError("conflict", "not_claimed", f"job {job_id} is not claimed")
    _holder_check(review, actor, now, admin_may_skip=True)
    _write(session, review, claimed_by=None, claim_expires_at=None)
    session.execute(insert(AuditEvent), [_audit(job_id, actor, "release", CLAIMED, review.status, None, now)])


def renew(session: Session, actor: Actor, job_id: str, lease_s: float, now: dt.datetime | None = None) -> dt.datetime:
    """Extend the caller's live claim; returns the new expiry. The caller commits."""
    now = now or utcnow()
    review = _read(session, job_id)
    if review.status in DECIDED:
        raise ReviewError("conflict", "already_decided", f"job {job_id} is already {review.status}")
    _holder_check(review, actor, now, admin_may_skip=False)
    until = now + dt.timedelta(seconds=lease_s)
    _write(session, review, claim_expires_at=until)
    session.execute(insert(AuditEvent), [_audit(job_id, actor, "renew", CLAIMED, CLAIMED, None, now)])
    return until
