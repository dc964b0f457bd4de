"""Job routes: HTTP in and out only; the work is in services.jobs."""

from __future__ import annotations

import base64
import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from genqueue import retention
from genqueue.enums import JobStatus, ReviewStatus, Role
from genqueue.schemas import BulkResult, ErrorResponse, JobList, JobLookup, JobOut, LookupResult, storable
from genqueue_api.deps import CurrentClient, CurrentKey, SessionDep, StateDep
from genqueue_api.errors import ApiError, not_found
from genqueue_api.services import jobs as service
from genqueue_api.services import jsonl
from genqueue_api.store import jobs as store

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
MAX_BULK = 1000  # jobs in one bulk request
_WAIT_RE = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d{1,9})")  # capped anyway: a 5000-digit int() raises
_MINIMAL_RE = re.compile(r"(?:^|[,;\s])return\s*=\s*\"?minimal\"?\s*(?:$|[,;])", re.IGNORECASE)
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 410, 413, 422, 429)
}


async def _json_body(request: Request) -> Any:
    return parse_json(await request.body())


def parse_json(raw: bytes) -> Any:
    """A request body as JSON; ApiError 400 ``invalid_json`` when it is not."""
    try:
        # NaN and Infinity are Python's extensions, not JSON: PostgreSQL's JSONB refuses them, SQLite turns
        # them into null. Integers past 4300 digits and nesting past ~1000 levels raise ValueError and
        # RecursionError rather than JSONDecodeError.
        return jsonl.strict_json(raw)
    except json.JSONDecodeError:  # before ValueError, of which it (and UnicodeDecodeError) is a subclass
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "the request body is not valid JSON: not UTF-8") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the request body is not valid JSON: nested too deeply") from None
    except ValueError as e:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {str(e)[:200]}") from None


def _json(model: BaseModel, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A model as JSON, serialized by pydantic's core in one pass: a thousand jobs' answer in a fraction of
    what model_dump followed by json.dumps costs."""
    return Response(model.model_dump_json(), status_code=status_code, headers=headers, media_type="application/json")


def _job_id(job_id: str) -> str:
    """A job id from the path; one with U+0000 cannot be looked up on PostgreSQL, and no job has one."""
    if "\x00" in job_id:
        raise not_found()
    return job_id


def _prefers_minimal(prefer: str | None) -> bool:
    return bool(prefer) and _MINIMAL_RE.search(prefer or "") is not None


def _prefer_wait(prefer: str | None, cap: int) -> float:
    if not prefer:
        return 0.0
    m = _WAIT_RE.search(prefer)
    return float(min(int(m.group(1)), cap)) if m else 0.0


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(str(seq).encode()).decode().rstrip("=")


_CURSOR_RE = re.compile(r"[0-9]{1,19}")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except Exception:
        text = ""
    # Only what encode_cursor writes: ASCII digits of a sequence number that fits the BIGINT column.
    if not _CURSOR_RE.fullmatch(text) or int(text) >= 2**63:
        raise ApiError(422, "validation_error", "invalid cursor", [{"field": "cursor", "message": "not a cursor from this API"}])
    return int(text)


@router.post("", status_code=201, response_model=JobOut, responses=_ERRORS,
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}}}}})
async def create_job(
    request: Request,
    state: StateDep,
    key: CurrentClient,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
    prefer: Annotated[str | None, Header()] = None,
) -> Response:
    body = await _json_body(request)

    def _create() -> tuple[JobOut, bool]:
        with state.db.session() as session:
            return service.create_job(state, session, key, body, idempotency_key)

    job, created = await run_in_threadpool(_create)
    wait = _prefer_wait(prefer, state.settings.max_wait_seconds)
    headers = {}
    if wait > 0:
        job = await service.wait_for(state, key, job, wait)
        headers["Preference-Applied"] = f"wait={int(wait)}"
    return _json(job, status_code=201 if created else 200, headers=headers)


@router.post("/bulk", response_model=BulkResult, responses=_ERRORS,
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BulkCreate"}}}}})
async def create_bulk(request: Request, state: StateDep, key: CurrentClient,
                      prefer: Annotated[str | None, Header()] = None) -> Response:
    """``Prefer: return=minimal`` answers each job with its id, model and status only (RFC 7240)."""
    body = await _json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("jobs"), list):
        raise ApiError(422, "validation_error", "invalid request: jobs", [{"field": "jobs", "message": "a list of job requests is required"}])
    items = body["jobs"]
    if not 1 <= len(items) <= MAX_BULK:
        raise ApiError(422, "validation_error",
                       f"invalid request: jobs: between 1 and {MAX_BULK} jobs per request, not {len(items)}",
                       [{"field": "jobs", "message": f"between 1 and {MAX_BULK} jobs per request", "limit": MAX_BULK}])

    def _create() -> BulkResult:
        with state.db.session() as session:
            return BulkResult(data=service.create_bulk(state, session, key, items, minimal))

    minimal = _prefers_minimal(prefer)
    result = await run_in_threadpool(_create)
    headers = {"Preference-Applied": "return=minimal"} if minimal else {}
    # Items left out by the key's in-flight limit: say when to send them again.
    if any(isinstance(r, ErrorResponse) and r.error.code == "rate_limited" for r in result.data):
        headers["Retry-After"] = "1"
    return _json(result, headers=headers or None)


@router.get("", response_model=JobList, responses=_ERRORS)
def list_jobs(
    session: SessionDep,
    key: CurrentKey,
    status: JobStatus | None = None,
    review: ReviewStatus | None = None,
    model: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: str | None = None,
) -> JobList:
    if key.role == Role.moderator.value:
        raise ApiError(403, "forbidden", "moderators use the review endpoints")
    if model is not None and "\x00" in model:
        raise ApiError(422, "validation_error", "invalid request: model",
                       [{"field": "model", "message": "must not contain the NUL character (U+0000)"}])
    before = decode_cursor(cursor) if cursor else None
    rows = store.list_jobs(session, None if key.role == Role.admin.value else key.id,
                           status=status.value if status else None, review=review.value if review else None,
                           model=model, limit=limit + 1, before_seq=before)
    more = len(rows) > limit
    rows = rows[:limit]
    return JobList(data=service.outs(session, rows),
                   next_cursor=encode_cursor(rows[-1].created_seq) if more and rows else None)


@router.post("/lookup", response_model=LookupResult, responses=_ERRORS)
def lookup_jobs(body: JobLookup, session: SessionDep, key: CurrentKey) -> LookupResult:
    """Up to 1,000 jobs by id in one call (a client following many jobs); ids that are not the caller's jobs
    come back in ``missing``."""
    if key.role == Role.moderator.value:
        raise ApiError(403, "forbidden", "moderators use the review endpoints")
    asked = list(dict.fromkeys(body.ids))
    ids = [i for i in asked if storable(i) and len(i) <= 64]
    owner = None if key.role == Role.admin.value else key.id
    ended = [s.value for s in JobStatus if s.terminal] if body.ended_only else None
    found = store.get_many(session, ids, owner, ended) if ids else {}
    known = (store.existing(session, ids, owner) if ids else set()) if body.ended_only else set(found)
    return LookupResult(data=service.outs(session, [found[i] for i in asked if i in found]),
                        missing=[i for i in asked if i not in known])


@router.get("/{job_id}", response_model=JobOut, responses=_ERRORS)
async def get_job(job_id: str, state: StateDep, key: CurrentKey,
                  prefer: Annotated[str | None, Header()] = None) -> Response:
    """``Prefer: wait=N`` holds the answer until the job ends, as on submit."""
    if key.role == Role.moderator.value:
        raise not_found()
    job = await run_in_threadpool(service.reload, state, key, _job_id(job_id))
    wait = _prefer_wait(prefer, state.settings.max_wait_seconds)
    headers = {}
    if wait > 0:
        job = await service.wait_for(state, key, job, wait)
        headers["Preference-Applied"] = f"wait={int(wait)}"
    return _json(job, headers=headers)


@router.post("/{job_id}/cancel", response_model=JobOut, responses=_ERRORS)
def cancel_job(job_id: str, session: SessionDep, key: CurrentClient) -> JobOut:
    return service.cancel_job(session, key, _job_id(job_id))


_CONTENT_TYPES = {"png": "image/png", "webp": "image/webp"}


@router.get("/{job_id}/images/{n}", responses={200: {"content": {"image/png": {}, "image/webp": {}}}, **_ERRORS})
def get_image(job_id: str, n: int, session: SessionDep, key: CurrentKey) -> Response:
    owner = None if key.role in (Role.admin.value, Role.moderator.value) else key.id
    job = store.get_owned(session, _job_id(job_id), owner)
    if job is None:
        raise not_found()
    img = store.image(session, job_id, n) if 0 <= n < 2**31 else None  # past the INTEGER column: no such image
    if img is None:
        when = retention.expired_at(job.metrics)
        if when is not None:
            raise ApiError(410, "expired", f"job {job_id}'s images were deleted on {when.isoformat()} (retention)")
        raise not_found("image")
    return Response(img.data, media_type=_CONTENT_TYPES.get(img.format, "application/octet-stream"),
                    headers={"Cache-Control": "private, max-age=31536000, immutable"})


