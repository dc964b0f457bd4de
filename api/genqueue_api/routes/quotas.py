"""Admin routes for one key's quotas (genqueue_api.quotas): read them, set them, put them back to default."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from genqueue.db.models import ApiKey
from genqueue.schemas import ErrorResponse, QuotaOut, QuotaUpdate
from genqueue_api import quotas
from genqueue_api.deps import CurrentAdmin, StateDep
from genqueue_api.errors import not_found
from genqueue_api.state import AppState

router = APIRouter(prefix="/v1/keys", tags=["quotas"])
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (401, 403, 404, 422)}


def _known(state: AppState, key_id: str) -> None:
    with state.db.session() as s:
        if "\x00" in key_id or len(key_id) > 64 or s.get(ApiKey, key_id) is None:
            raise not_found("key")


def _out(key_id: str, q: quotas.Quota) -> QuotaOut:
    return QuotaOut(key_id=key_id, requests_per_s=q.requests_per_s, jobs_per_min=q.jobs_per_min,
                    jobs_in_flight=q.jobs_in_flight, overrides=q.overrides, in_flight=q.in_flight)


@router.get("/{key_id}/quota", response_model=QuotaOut, responses=_ERRORS)
async def get_quota(key_id: str, state: StateDep, _admin: CurrentAdmin) -> QuotaOut:
    await run_in_threadpool(_known, state, key_id)
    return _out(key_id, await run_in_threadpool(quotas.read, state, key_id))


@router.put("/{key_id}/quota", response_model=QuotaOut, responses=_ERRORS)
async def set_quota(key_id: str, body: QuotaUpdate, state: StateDep, _admin: CurrentAdmin) -> QuotaOut:
    """Set the fields sent (a number; 0 means no limit) or put them back to the default (null)."""
    await run_in_threadpool(_known, state, key_id)
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    return _out(key_id, await run_in_threadpool(quotas.write, state, key_id, changes))
