"""The console's service: what a page needs, built on the review service that the HTTP API uses
(genqueue_api.services.review), so that claims and decisions follow exactly the same rules and audit trail."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy.orm import Session

from genqueue.db.models import ApiKey, JobImage, utcnow
from genqueue.review.schemas import ClaimRequest, DecisionRequest, History, ReviewItem
from genqueue_api.console import store
from genqueue_api.errors import ApiError, not_found
from genqueue_api.services import review
from genqueue_api.state import AppState
from genqueue_api.store import review as review_store


@dataclass(frozen=True)
class Shown:
    """One item as the console shows it: the review item and its audit trail."""

    item: ReviewItem
    history: History


def _shown(session: Session, items: list[ReviewItem]) -> list[Shown]:
    return [Shown(i, review.history(session, i.job_id)) for i in items]


def claim(state: AppState, session: Session, key: ApiKey, limit: int, model: str | None) -> list[Shown]:
    req = ClaimRequest(limit=limit, model=model or None, flagged_first=True)
    return _shown(session, review.claim(state, session, key, req))


def held(session: Session, key: ApiKey, now: dt.datetime | None = None) -> list[Shown]:
    ids = store.held(session, key.id, now or utcnow())
    return _shown(session, [review.item(r, j) for r, j in review_store.items(session, ids)])


def decide(session: Session, key: ApiKey, job_id: str, decision: str, reason: str | None) -> ReviewItem:
    try:
        req = DecisionRequest.model_validate({"decision": decision, "reason": reason})
    except ValueError:
        raise ApiError(422, "validation_error", "decision must be approve, reject or escalate, with a reason "
                       "of at most 2000 characters") from None
    return review.decide(session, key, job_id, req)


def release(session: Session, key: ApiKey, job_id: str) -> ReviewItem:
    return review.release(session, key, job_id)


def renew(state: AppState, session: Session, key: ApiKey, job_id: str) -> ReviewItem:
    return review.renew(state, session, key, job_id, None)


def counters(session: Session, key: ApiKey, now: dt.datetime | None = None) -> store.Counters:
    return store.counters(session, key.id, now or utcnow())


def recent_reasons(session: Session, key: ApiKey) -> list[str]:
    return store.recent_reasons(session, key.id)


def image(session: Session, job_id: str, index: int) -> JobImage:
    img = store.image(session, job_id, index) if 0 <= index < 2**31 else None
    if img is None:
        raise not_found("image")
    return img
