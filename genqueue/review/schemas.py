"""Request and response models of the review and delivery endpoints (see the README's moderation part)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from genqueue.enums import ReviewStatus
from genqueue.schemas import ErrorBody, ReviewFlag, ReviewInfo, storable

Decision = Literal["approve", "reject", "escalate"]


def _text(v: str | None) -> str | None:
    if v is not None and not storable(v):
        raise ValueError("must not contain U+0000 or lone surrogates")
    return v


class ClaimRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    model: str | None = Field(default=None, min_length=1, max_length=130)  # "name" (a version is ignored)
    flagged_first: bool = True
    # The claim's lease; GENQUEUE_REVIEW_CLAIM_LEASE_S (10 minutes) when not given.
    lease_seconds: float | None = Field(default=None, gt=0, le=86400)

    _checks = field_validator("model")(_text)


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Decision
    reason: str | None = Field(default=None, max_length=2000)  # required to reject

    _checks = field_validator("reason")(_text)


class BulkDecisionRequest(DecisionRequest):
    job_ids: list[str] = Field(min_length=1, max_length=1000)

    @field_validator("job_ids")
    @classmethod
    def _ids(cls, v: list[str]) -> list[str]:
        for i in v:
            if not storable(i) or len(i) > 64:
                raise ValueError("job ids are at most 64 characters of text")
        return v


class RenewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lease_seconds: float | None = Field(default=None, gt=0, le=86400)


class ReviewItem(BaseModel):
    """An output under review, with what a moderator needs to judge it."""

    job_id: str
    model: str
    model_version: str
    kind: Literal["text", "image"]
    status: ReviewStatus
    flags: list[ReviewFlag] = Field(default_factory=list)
    flag_score: float = 0.0
    claimed_by: str | None = None
    claim_expires_at: dt.datetime | None = None
    queued_at: dt.datetime
    decided_by: str | None = None
    decided_at: dt.datetime | None = None
    reason: str | None = None
    input: dict[str, Any]
    output: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: dt.datetime


class ReviewList(BaseModel):
    data: list[ReviewItem]


class AuditEventOut(BaseModel):
    at: dt.datetime
    actor: str | None  # the API key's id; null for the system
    actor_name: str | None
    action: str  # prescreen | claim | renew | release | expire | approve | reject | escalate
    from_status: str | None
    to_status: str | None
    reason: str | None = None


class History(BaseModel):
    job_id: str
    data: list[AuditEventOut]


class BulkDecisionItem(BaseModel):
    job_id: str
    ok: bool
    review: ReviewItem | None = None
    error: ErrorBody | None = None


class BulkDecisionResult(BaseModel):
    data: list[BulkDecisionItem]


class FeedItem(BaseModel):
    cursor: str  # the feed position of this item: pass it as ?after= to continue after it
    job_id: str
    model: str
    model_version: str
    kind: Literal["text", "image"]
    output: dict[str, Any] | None
    metadata: dict[str, Any] = Field(default_factory=dict)
    review: ReviewInfo
    delivered_at: dt.datetime | None  # when the output became deliverable (decision time)
    created_at: dt.datetime


class Feed(BaseModel):
    data: list[FeedItem]
    # Where to continue from: the last item's cursor, or the request's own when nothing new was there.
    # Never null, so a follower can keep polling with it.
    next_cursor: str | None
