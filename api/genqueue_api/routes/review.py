"""Review routes (moderators and admins): claim, decide, release, renew, history. HTTP only; the work is
in services.review."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from genqueue.review.schemas import (
    BulkDecisionRequest,
    BulkDecisionResult,
    ClaimRequest,
    DecisionRequest,
    History,
    RenewRequest,
    ReviewItem,
    ReviewList,
)
from genqueue.schemas import ErrorResponse
from genqueue_api.deps import CurrentModerator, SessionDep, StateDep
from genqueue_api.errors import not_found
from genqueue_api.services import review as service

router = APIRouter(prefix="/v1/review", tags=["review"])
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422)}


def _job_id(job_id: str) -> str:
    if "\x00" in job_id or len(job_id) > 64:
        raise not_found()
    return job_id


@router.post("/claim", response_model=ReviewList, responses=_ERRORS)
def claim(req: ClaimRequest, state: StateDep, session: SessionDep, key: CurrentModerator) -> ReviewList:
    """Claim up to ``limit`` items under a lease. Escalated items are claimed by admins only."""
    return ReviewList(data=service.claim(state, session, key, req))


@router.post("/bulk-decision", response_model=BulkDecisionResult, responses=_ERRORS)
def bulk_decision(req: BulkDecisionRequest, session: SessionDep, key: CurrentModerator) -> BulkDecisionResult:
    return BulkDecisionResult(data=service.bulk_decide(session, key, req))


@router.post("/{job_id}/decision", response_model=ReviewItem, responses=_ERRORS)
def decision(job_id: str, req: DecisionRequest, session: SessionDep, key: CurrentModerator) -> ReviewItem:
    """approve, reject (with a reason) or escalate an item the caller holds (admins: any item)."""
    return service.decide(session, key, _job_id(job_id), req)


@router.post("/{job_id}/release", response_model=ReviewItem, responses=_ERRORS)
def release(job_id: str, session: SessionDep, key: CurrentModerator) -> ReviewItem:
    return service.release(session, key, _job_id(job_id))


@router.post("/{job_id}/renew", response_model=ReviewItem, responses=_ERRORS)
def renew(job_id: str, state: StateDep, session: SessionDep, key: CurrentModerator,
          req: RenewRequest | None = None) -> ReviewItem:
    """Extend the caller's live claim (by the default lease, or ``lease_seconds``)."""
    return service.renew(state, session, key, _job_id(job_id), req.lease_seconds if req else None)


@router.get("/{job_id}/history", response_model=History, responses=_ERRORS)
def history(job_id: str, session: SessionDep, key: CurrentModerator) -> History:
    return service.history(session, _job_id(job_id))
