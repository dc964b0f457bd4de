"""Review service: moderators' claims and decisions. The transitions themselves (and their audit events)
are genqueue.review.state's; here they become HTTP answers."""

from __future__ import annotations

from sqlalchemy.orm import Session

from genqueue.db.models import ApiKey, Job, Review
from genqueue.enums import ReviewStatus
from genqueue.review import state
from genqueue.review.schemas import (
    AuditEventOut,
    BulkDecisionItem,
    BulkDecisionRequest,
    ClaimRequest,
    DecisionRequest,
    History,
    ReviewItem,
)
from genqueue.schemas import ErrorBody, ReviewFlag
from genqueue_api import review_metrics
from genqueue_api.errors import ApiError
from genqueue_api.state import AppState
from genqueue_api.store import review as store

_HTTP = {"not_found": 404, "conflict": 409, "forbidden": 403, "invalid": 422}


def _api_error(e: state.ReviewError) -> ApiError:
    details = [{"field": "reason", "message": e.message}] if e.code == "reason_required" else []
    return ApiError(_HTTP[e.kind], e.code, e.message, details)


def item(review: Review, job: Job) -> ReviewItem:
    return ReviewItem(
        job_id=job.id, model=job.model, model_version=job.model_version, kind=job.kind,  # type: ignore[arg-type]
        status=ReviewStatus(review.status), flags=[ReviewFlag(**f) for f in review.flags or []],
        flag_score=review.flag_score, claimed_by=review.claimed_by, claim_expires_at=review.claim_expires_at,
        queued_at=review.queued_at, decided_by=review.decided_by, decided_at=review.decided_at,
        reason=review.reason, input=job.input, output=job.output, metadata=job.metadata_ or {},
        created_at=job.created_at)


def _one(session: Session, job_id: str) -> ReviewItem:
    found = store.items(session, [job_id])
    if not found:
        raise ApiError(404, "not_found", "job not found")
    return item(*found[0])


def claim(state_: AppState, session: Session, key: ApiKey, req: ClaimRequest) -> list[ReviewItem]:
    lease = req.lease_seconds or state_.settings.review_claim_lease_s
    ids = state.claim(session, state.Actor.of(key), req.limit, model=req.model, flagged_first=req.flagged_first,
                      lease_s=lease)
    session.commit()
    return [item(r, j) for r, j in store.items(session, ids)]


def decide(session: Session, key: ApiKey, job_id: str, req: DecisionRequest) -> ReviewItem:
    try:
        done = state.decide(session, state.Actor.of(key), job_id, req.decision, req.reason)
        session.commit()
    except state.ReviewError as e:
        session.rollback()
        raise _api_error(e) from None
    review_metrics.DECISIONS.labels(req.decision).inc()
    if done.status != ReviewStatus.escalated.value:
        review_metrics.DECISION_LATENCY.labels(done.model).observe(
            max(0.0, (done.decided_at - done.queued_at).total_seconds()))
    return _one(session, job_id)


def bulk_decide(session: Session, key: ApiKey, req: BulkDecisionRequest) -> list[BulkDecisionItem]:
    """Each id is decided in a transaction of its own, and succeeds or fails alone."""
    one = DecisionRequest(decision=req.decision, reason=req.reason)
    out = []
    for job_id in req.job_ids:
        try:
            out.append(BulkDecisionItem(job_id=job_id, ok=True, review=decide(session, key, job_id, one)))
        except ApiError as e:
            out.append(BulkDecisionItem(job_id=job_id, ok=False,
                                        error=ErrorBody(code=e.code, message=e.message, details=e.details)))
    return out


def release(session: Session, key: ApiKey, job_id: str) -> ReviewItem:
    try:
        state.release(session, state.Actor.of(key), job_id)
        session.commit()
    except state.ReviewError as e:
        session.rollback()
        raise _api_error(e) from None
    return _one(session, job_id)


def renew(state_: AppState, session: Session, key: ApiKey, job_id: str, lease_s: float | None) -> ReviewItem:
    try:
        state.renew(session, state.Actor.of(key), job_id, lease_s or state_.settings.review_claim_lease_s)
        session.commit()
    except state.ReviewError as e:
        session.rollback()
        raise _api_error(e) from None
    return _one(session, job_id)


def history(session: Session, job_id: str) -> History:
    events = store.history(session, job_id)
    if not events and session.get(Job, job_id) is None:
        raise ApiError(404, "not_found", "job not found")
    return History(job_id=job_id, data=[
        AuditEventOut(at=e.at, actor=e.actor, actor_name=e.actor_name, action=e.action, from_status=e.from_status,
                      to_status=e.to_status, reason=e.reason) for e in events])
