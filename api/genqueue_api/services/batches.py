"""Batches: JSONL request lines become jobs, chunk by chunk, and the batch follows its jobs.

A batch's lines are read as they arrive (a JSONL body) or part by part (an uploaded file), and handled in
chunks of CHUNK_LINES: each chunk's lines are validated one by one, its jobs and line rows inserted and
COMMITTED in one short transaction, then published like a bulk submit. Neither the file nor one giant
transaction is ever held, so other clients' submits go on meanwhile, and the first jobs run while later
lines are still being read. A line that fails validation is kept with its line number, field and message;
the other lines go through.

Status: validating (lines still being read) → in_progress → completed once every job has ended;
cancelling → cancelled (queued jobs are canceled at once, running ones finish); failed when no line was
valid. The request counts are counted from the jobs whenever the batch is read.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool

from genqueue import jobstate, logs
from genqueue.db.models import ApiKey, Batch, utcnow
from genqueue.enums import JobStatus, Role
from genqueue.openai_schemas import (
    ENDPOINTS,
    BatchCreate,
    BatchErrors,
    BatchLineError,
    BatchList,
    BatchObject,
    RequestCounts,
)
from genqueue.review import state as review_state
from genqueue_api import quotas
from genqueue_api.errors import ApiError
from genqueue_api.services import files as files_service
from genqueue_api.services import openai_compat
from genqueue_api.services.batch_builder import CHUNK_LINES, Builder
from genqueue_api.services.jsonl import Line, LineSplitter
from genqueue_api.services.openai_compat import OpenAIError
from genqueue_api.state import AppState
from genqueue_api.store import batches as store
from genqueue_api.store import files as files_store

log = logging.getLogger(__name__)

SHOWN_ERRORS = 100  # line errors listed in the batch object; the error file and the results hold them all
COMPLETION_WINDOW = dt.timedelta(hours=24)
# A batch still validating this long after its last chunk was stored has lost its reader (the API process
# died, or the client went silent): the lines stored so far run, and the batch says the upload was cut.
READER_LOST = dt.timedelta(minutes=15)
_ENDED = ("completed", "failed", "cancelled")


def new_id() -> str:
    return "batch_" + uuid.uuid4().hex[:24]


def _owner(key: ApiKey) -> str | None:
    return None if key.role == Role.admin.value else key.id


def not_found() -> OpenAIError:
    return OpenAIError(404, "not_found", "batch not found", "batch_id")


def check_endpoint(endpoint: str) -> str:
    if endpoint not in ENDPOINTS:
        raise OpenAIError(400, "unsupported_endpoint",
                          f"endpoint {endpoint!r} is not supported: batches run {' and '.join(ENDPOINTS)}",
                          "endpoint")
    return endpoint


def charge_request(state: AppState, key: ApiKey) -> None:
    """A batch is one submit request for the key's requests-per-second quota, charged once the request
    itself is known good (its lines are charged as jobs, chunk by chunk, as they are stored)."""
    try:
        quotas.charge_request(state, key.id)
    except ApiError as e:
        raise openai_compat.from_api_error(e) from None


def start(state: AppState, key: ApiKey, endpoint: str, input_file_id: str | None,
          metadata: dict[str, str] | None) -> str:
    """A new batch in status validating, with its (generated) output and error files."""
    batch_id, now = new_id(), utcnow()
    out_id, err_id = files_service.new_id(), files_service.new_id()
    with state.db.session() as s:
        for file_id, purpose in ((out_id, "batch_output"), (err_id, "batch_error")):
            files_store.insert_file(s, {"id": file_id, "owner_id": key.id, "purpose": purpose,
                                        "filename": f"{batch_id}_{purpose.removeprefix('batch_')}.jsonl",
                                        "bytes": None, "lines": None, "batch_id": batch_id, "created_at": now})
        store.insert_batch(s, {"id": batch_id, "owner_id": key.id, "endpoint": endpoint, "status": "validating",
                               "completion_window": "24h", "input_file_id": input_file_id, "output_file_id": out_id,
                               "error_file_id": err_id, "metadata_": metadata, "total": 0, "invalid": 0,
                               "errors": [], "created_at": now, "read_at": now,
                               "expires_at": now + COMPLETION_WINDOW})
        s.commit()
    return batch_id


def create_from_file(state: AppState, key: ApiKey, req: BatchCreate) -> BatchObject:
    """OpenAI's batches.create: a batch of an uploaded file's lines."""
    endpoint = check_endpoint(req.endpoint)
    f = files_service.owned(state, key, req.input_file_id)
    if f.purpose != "batch":
        raise OpenAIError(400, "invalid_file", f"file {f.id} is not a batch input (its purpose is {f.purpose})",
                          "input_file_id")
    charge_request(state, key)
    batch_id = start(state, key, endpoint, f.id, req.metadata)
    builder = Builder(state, key, batch_id, endpoint)
    try:
        builder.add_all(files_service.lines(state, f.id))
    finally:
        builder.finish()
    return get(state, key, batch_id)


async def create_from_stream(state: AppState, key: ApiKey, endpoint: str, body: AsyncIterator[bytes]) -> BatchObject:
    """POST /v1/batches with a JSONL body: lines are handled a chunk at a time as the body arrives, so the
    first jobs are stored (and running) before the upload ends, and the body is never held whole."""
    check_endpoint(endpoint)
    await run_in_threadpool(charge_request, state, key)
    batch_id = await run_in_threadpool(start, state, key, endpoint, None, None)
    builder = Builder(state, key, batch_id, endpoint)
    splitter = LineSplitter()
    chunk: list[Line] = []
    try:
        async for data in body:
            if builder.stopped:
                continue  # read to the end, so that the client gets its answer rather than a broken pipe
            chunk.extend(splitter.feed(data))
            while len(chunk) >= CHUNK_LINES and not builder.stopped:
                head, chunk = chunk[:CHUNK_LINES], chunk[CHUNK_LINES:]
                await run_in_threadpool(builder.add, head)
        chunk.extend(splitter.close())
        while chunk and not builder.stopped:
            head, chunk = chunk[:CHUNK_LINES], chunk[CHUNK_LINES:]
            await run_in_threadpool(builder.add, head)
    except BaseException:
        # The client went away or the body passed the size limit: what was read runs, and the batch says so.
        await run_in_threadpool(builder.finish, {"code": "upload_incomplete", "line": splitter.line + 1,
                                                 "param": None, "message": "the upload ended before its last line"})
        raise
    await run_in_threadpool(builder.finish)
    return await run_in_threadpool(get, state, key, batch_id)


# -- reading a batch -------------------------------------------------------------------------------------

def _ts(t: dt.datetime | None) -> int | None:
    return int(t.timestamp()) if t is not None else None


def _refresh(state: AppState, batch: Batch) -> tuple[Batch, RequestCounts]:
    """The batch's counts from its jobs; a batch whose jobs have all ended moves to its final status here,
    guarded, so that concurrent readers agree."""
    if batch.status == "validating" and utcnow() - batch.read_at > READER_LOST:
        _reader_lost(state, batch)
        batch = owned_any(state, batch.id)
    with state.db.session() as s:
        by_status = store.job_counts(s, batch.id)
        active = by_status.get(JobStatus.queued.value, 0) + by_status.get(JobStatus.running.value, 0)
        if active == 0 and batch.status in ("in_progress", "cancelling"):
            now = utcnow()
            if batch.status == "in_progress":
                store.move(s, batch.id, ["in_progress"], "completed", {"completed_at": now})
            else:
                store.move(s, batch.id, ["cancelling"], "cancelled", {"cancelled_at": now})
            s.commit()
            fresh = store.get_owned(s, batch.id, None)
            assert fresh is not None
            batch = fresh
    counts = RequestCounts(
        total=batch.total, completed=by_status.get(JobStatus.succeeded.value, 0),
        failed=batch.invalid + by_status.get(JobStatus.failed.value, 0) + by_status.get(JobStatus.canceled.value, 0))
    return batch, counts


def _reader_lost(state: AppState, batch: Batch) -> None:
    error = {"code": "upload_incomplete", "line": batch.total + 1 if batch.total else None, "param": None,
             "message": f"no line was stored for {READER_LOST.seconds // 60} minutes: the upload was cut"}
    now = utcnow()
    with state.db.session() as s:
        valid = batch.total - batch.invalid
        if store.move(s, batch.id, ["validating"], "in_progress" if valid else "failed",
                      {"in_progress_at": now} if valid else {"failed_at": now}):
            store.add_errors(s, batch.id, [error])
        s.commit()


def owned_any(state: AppState, batch_id: str) -> Batch:
    with state.db.session() as s:
        batch = store.get_owned(s, batch_id, None)
    if batch is None:
        raise not_found()
    return batch


def to_object(state: AppState, batch: Batch) -> BatchObject:
    batch, counts = _refresh(state, batch)
    errors = [BatchLineError(code=str(e.get("code")), message=str(e.get("message")), param=e.get("param"),
                             line=e.get("line")) for e in batch.errors or []]
    if batch.invalid:
        with state.db.session() as s:
            for r in store.refused_lines(s, batch.id, SHOWN_ERRORS):
                err = r.error or {}
                errors.append(BatchLineError(code=str(err.get("code", "invalid_request")),
                                             message=str(err.get("message", "")), param=err.get("field"), line=r.line))
    ended = batch.status in _ENDED
    finished_at = batch.completed_at or batch.cancelled_at or batch.failed_at
    return BatchObject(
        id=batch.id, endpoint=batch.endpoint, errors=BatchErrors(data=errors) if errors else None,
        input_file_id=batch.input_file_id, completion_window=batch.completion_window, status=batch.status,  # type: ignore[arg-type]
        output_file_id=batch.output_file_id if ended and counts.completed else None,
        error_file_id=batch.error_file_id if ended and counts.failed else None,
        created_at=int(batch.created_at.timestamp()), in_progress_at=_ts(batch.in_progress_at),
        expires_at=_ts(batch.expires_at), finalizing_at=_ts(finished_at) if ended else None,
        completed_at=_ts(batch.completed_at), failed_at=_ts(batch.failed_at), cancelling_at=_ts(batch.cancelling_at),
        cancelled_at=_ts(batch.cancelled_at), request_counts=counts, metadata=batch.metadata_)


def owned(state: AppState, key: ApiKey, batch_id: str) -> Batch:
    with state.db.session() as s:
        batch = store.get_owned(s, batch_id, _owner(key))
    if batch is None:
        raise not_found()
    return batch


def get(state: AppState, key: ApiKey, batch_id: str) -> BatchObject:
    return to_object(state, owned(state, key, batch_id))


def list_batches(state: AppState, key: ApiKey, after: str | None, limit: int) -> BatchList:
    """Newest first; ``after`` is the last id of the previous page (OpenAI's cursor)."""
    before = None
    if after is not None:
        with state.db.session() as s:
            cursor = store.get_owned(s, after, _owner(key))
        if cursor is None:
            raise OpenAIError(400, "invalid_cursor", "after must be the id of one of your batches", "after")
        before = cursor.seq
    with state.db.session() as s:
        rows = store.list_owned(s, _owner(key), before, limit + 1)
    data = [to_object(state, b) for b in rows[:limit]]
    return BatchList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                     has_more=len(rows) > limit)


def cancel(state: AppState, key: ApiKey, batch_id: str) -> BatchObject:
    """Queued jobs are canceled (a chunk per transaction); running jobs finish and count as they end."""
    batch = owned(state, key, batch_id)
    if batch.status in _ENDED:
        raise OpenAIError(409, "batch_ended", f"batch {batch_id} is already {batch.status}", "batch_id")
    with state.db.session() as s:
        store.move(s, batch_id, ["validating", "in_progress"], "cancelling", {"cancelling_at": utcnow()})
        s.commit()
    after = 0
    while True:
        with state.db.session() as s:
            ids = store.job_ids_in_lines(s, batch_id, after, CHUNK_LINES)
            if not ids and after >= store.last_line(s, batch_id):
                break
            canceled = jobstate.cancel_queued(s, ids)  # only the queued ones
            review_state.record_canceled(s, canceled)  # their job.canceled webhooks, in the same transaction
            s.commit()
        logs.jobs_event(log, "canceled", canceled, batch_id=batch_id)
        after += CHUNK_LINES
    return get(state, key, batch_id)
