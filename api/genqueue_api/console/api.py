"""The console's JSON endpoints, called by its page script: claim a page, decide, release, renew, counters,
and the images of items under review. Every change needs the session's CSRF token (X-CSRF-Token). Errors
keep the API's shape, {"error": {"code", "message", "details"}}, and the page shows their message."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from genqueue_api.console import service, web
from genqueue_api.console.auth import ApiViewer, CsrfViewer
from genqueue_api.deps import SessionDep, StateDep
from genqueue_api.errors import not_found

router = APIRouter(prefix="/console", include_in_schema=False)

_CONTENT_TYPES = {"png": "image/png", "webp": "image/webp"}


class ClaimBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=10, ge=1, le=50)
    model: str | None = Field(default=None, max_length=130)


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: str = Field(max_length=20)
    reason: str | None = Field(default=None, max_length=2000)


def _job_id(job_id: str) -> str:
    if "\x00" in job_id or len(job_id) > 64:
        raise not_found()
    return job_id


@router.post("/api/claim")
def claim(body: ClaimBody, state: StateDep, session: SessionDep, viewer: CsrfViewer) -> dict[str, Any]:
    shown = service.claim(state, session, viewer.key, body.limit, body.model)
    return {"items": [web.shown_json(s) for s in shown],
            "counters": web.counters_json(service.counters(session, viewer.key))}


@router.post("/api/items/{job_id}/decision")
def decide(job_id: str, body: DecisionBody, session: SessionDep, viewer: CsrfViewer) -> dict[str, Any]:
    item = service.decide(session, viewer.key, _job_id(job_id), body.decision, body.reason)
    return {"review": item.model_dump(mode="json", include={"job_id", "status", "decided_by", "decided_at", "reason"}),
            "counters": web.counters_json(service.counters(session, viewer.key)),
            "reasons": service.recent_reasons(session, viewer.key)}


@router.post("/api/items/{job_id}/release")
def release(job_id: str, session: SessionDep, viewer: CsrfViewer) -> dict[str, Any]:
    service.release(session, viewer.key, _job_id(job_id))
    return {"counters": web.counters_json(service.counters(session, viewer.key))}


@router.post("/api/items/{job_id}/renew")
def renew(job_id: str, state: StateDep, session: SessionDep, viewer: CsrfViewer) -> dict[str, Any]:
    item = service.renew(state, session, viewer.key, _job_id(job_id))
    return {"claim_expires_at": web.iso(item.claim_expires_at)}


@router.get("/api/counters")
def counters(session: SessionDep, viewer: ApiViewer) -> dict[str, Any]:
    return {"counters": web.counters_json(service.counters(session, viewer.key))}


@router.get("/images/{job_id}/{n}")
def image(job_id: str, n: int, session: SessionDep, viewer: ApiViewer) -> Response:
    img = service.image(session, _job_id(job_id), n)
    return Response(img.data, media_type=_CONTENT_TYPES.get(img.format, "application/octet-stream"),
                    headers={"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"})
