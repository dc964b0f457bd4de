"""The delivery feed for content backends: GET /v1/feed?after=<cursor>&limit=."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from genqueue.review.schemas import Feed
from genqueue.schemas import ErrorResponse
from genqueue_api.deps import CurrentClient, SessionDep
from genqueue_api.services import feed as service

router = APIRouter(prefix="/v1/feed", tags=["delivery"])
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (401, 403, 422)}


@router.get("", response_model=Feed, responses=_ERRORS)
def read_feed(session: SessionDep, key: CurrentClient, after: Annotated[str | None, Query(max_length=64)] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Feed:
    """Approved outputs and outputs that needed no review, in the order they became deliverable. Continue
    with ``after=next_cursor``; an empty page keeps the cursor where it was."""
    return service.read(session, key, after, limit)
