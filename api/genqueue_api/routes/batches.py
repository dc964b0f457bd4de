"""Batches: a JSONL body or an uploaded file of request lines, run as jobs (OpenAI's Batch API's model)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from genqueue.openai_schemas import BatchCreate, BatchList, BatchObject, OpenAIErrorResponse
from genqueue_api.deps import CurrentClient, StateDep
from genqueue_api.errors import validation_details
from genqueue_api.services import batch_results
from genqueue_api.services import batches as service
from genqueue_api.services.jsonl import loads
from genqueue_api.services.openai_compat import OpenAIError

router = APIRouter(prefix="/v1/batches", tags=["batches"])
_ERRORS: dict[int | str, dict[str, Any]] = {c: {"model": OpenAIErrorResponse} for c in (400, 401, 403, 404, 409, 413, 422)}
_CREATE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/BatchCreate"}},
    "application/jsonl": {"schema": {"type": "string", "description": "one request line per line"}}}}}


async def read_json(request: Request, max_bytes: int) -> Any:
    """A small JSON body, read to at most ``max_bytes`` (these paths allow large uploads)."""
    raw = bytearray()
    async for data in request.stream():
        raw += data
        if len(raw) > max_bytes:
            raise OpenAIError(413, "payload_too_large", f"a JSON body is at most {max_bytes} bytes")
    try:
        return loads(bytes(raw))
    except ValueError as e:
        raise OpenAIError(400, "invalid_json", f"the request body is {e}") from None


@router.post("", response_model=BatchObject, responses=_ERRORS, openapi_extra=_CREATE_BODY)
async def create_batch(request: Request, state: StateDep, key: CurrentClient,
                       endpoint: Annotated[str | None, Query(max_length=64)] = None) -> BatchObject:
    """Two ways in. JSON (`content-type: application/json`) is OpenAI's `batches.create`: the lines of an
    uploaded file (`input_file_id`), `endpoint` "/v1/completions" or "/v1/jobs", `completion_window` "24h".
    Any other content type is a JSONL body, read as it arrives (up to GENQUEUE_BATCH_MAX_BYTES and
    GENQUEUE_BATCH_MAX_LINES lines), for the endpoint in the `endpoint` query parameter ("/v1/jobs" unless
    given). A line is OpenAI's request line (`custom_id`, `method`, `url`, `body`) or, for /v1/jobs, a job
    request with a `custom_id`. Each line is validated alone; a refused line is reported with its line
    number, field and message, and the others run. Answers once every line is stored."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        if endpoint is not None:
            raise OpenAIError(400, "invalid_request", "with a JSON body the endpoint is given in the body", "endpoint")
        body = await read_json(request, state.settings.max_body_bytes)
        try:
            req = BatchCreate.model_validate(body)
        except ValidationError as e:
            details = validation_details(list(e.errors()), strip_body=False)
            field = details[0]["field"] if details else None
            message = f"invalid request: {field}: {details[0]['message']}" if details else "invalid request"
            raise OpenAIError(400, "invalid_request", message, field, details) from None
        return await run_in_threadpool(service.create_from_file, state, key, req)
    return await service.create_from_stream(state, key, endpoint or "/v1/jobs", request.stream())


@router.get("", response_model=BatchList, responses=_ERRORS)
def list_batches(state: StateDep, key: CurrentClient, after: Annotated[str | None, Query(max_length=64)] = None,
                 limit: Annotated[int, Query(ge=1, le=100)] = 20) -> BatchList:
    """Newest first; continue with `after` = the previous page's `last_id`."""
    return service.list_batches(state, key, after, limit)


@router.get("/{batch_id}", response_model=BatchObject, responses=_ERRORS)
def get_batch(batch_id: str, state: StateDep, key: CurrentClient) -> BatchObject:
    """The batch, with `request_counts` counted from its jobs now: they move while it runs."""
    return service.get(state, key, batch_id)


@router.get("/{batch_id}/results", response_class=StreamingResponse, responses={200: {"content": {"application/jsonl": {}}}, **_ERRORS})
def get_batch_results(batch_id: str, state: StateDep, key: CurrentClient) -> StreamingResponse:
    """JSONL, streamed: one line per input line, in input order, at any time. Each has `id`, `custom_id`,
    `line`, `status` (the job's, or "invalid"), `job_id`, and `response` (`status_code`, `request_id`,
    `body`) once the line has an answer (null while its job is queued or running)."""
    batch = service.owned(state, key, batch_id)
    return StreamingResponse(batch_results.stream(state, batch, "all"), media_type="application/jsonl")


@router.post("/{batch_id}/cancel", response_model=BatchObject, responses=_ERRORS)
def cancel_batch(batch_id: str, state: StateDep, key: CurrentClient) -> BatchObject:
    """Cancels the batch's queued jobs at once; running jobs finish. The batch is `cancelling` until they
    have, then `cancelled`. A batch that has ended answers 409."""
    return service.cancel(state, key, batch_id)
