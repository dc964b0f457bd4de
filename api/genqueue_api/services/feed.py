"""Delivery feed: deliverable outputs (approved, or needing no review) in the order they became
deliverable. Positions (``feed_seq``) become visible in increasing order (see genqueue.review.state), so a
follower that continues from the last position it saw never misses an item and never sees one twice."""

from __future__ import annotations

import base64
import re

from sqlalchemy.orm import Session

from genqueue.db.models import ApiKey
from genqueue.enums import ReviewStatus, Role
from genqueue.review.schemas import Feed, FeedItem
from genqueue.schemas import ReviewFlag, ReviewInfo
from genqueue_api.errors import ApiError
from genqueue_api.store import review as store

_DIGITS = re.compile(r"[0-9]{1,19}")


def encode(seq: int) -> str:
    return base64.urlsafe_b64encode(f"f{seq}".encode()).decode().rstrip("=")


def decode(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except Exception:
        text = ""
    if not (text.startswith("f") and _DIGITS.fullmatch(text[1:]) and int(text[1:]) < 2**63):
        raise ApiError(422, "validation_error", "invalid request: after",
                       [{"field": "after", "message": "not a feed cursor from this API"}])
    return int(text[1:])


def read(session: Session, key: ApiKey, after: str | None, limit: int) -> Feed:
    """Clients read the outputs of their own jobs; admins read everyone's."""
    start = decode(after) if after else 0
    rows = store.feed(session, None if key.role == Role.admin.value else key.id, start, limit)
    data = [FeedItem(
        cursor=encode(r.feed_seq or 0), job_id=j.id, model=j.model, model_version=j.model_version,
        kind=j.kind, output=j.output, metadata=j.metadata_ or {},  # type: ignore[arg-type]
        review=ReviewInfo(status=ReviewStatus(r.status), flags=[ReviewFlag(**f) for f in r.flags or []],
                          decided_by=r.decided_by, reason=r.reason),
        delivered_at=r.decided_at, created_at=j.created_at) for r, j in rows]
    return Feed(data=data, next_cursor=data[-1].cursor if data else (after or encode(0)))
