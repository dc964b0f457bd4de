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
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from typing import Any

from starlette.concurrency import run_in_threadpool

from genqueue import jobstate, logs, queue
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
from genqueue.schemas import storable
from genqueue_api import metrics
from genqueue_api.errors import ApiError
from genqueue_api.services import files as files_service
from genqueue_api.services import jobs as jobs_service
from genqueue_api.services import openai_compat
from genqueue_api.services.jsonl import MAX_LINE_BYTES, Line, LineSplitter, loads
from genqueue_api.services.openai_compat import OpenAIError
from genqueue_api.state import AppState
from genqueue_api.store import batches as store
from genqueue_api.store import files as files_store
from genqueue_api.store import jobs as jobs_store

log = logging.getLogger(__name__)

CHUNK_LINES = 1000  # lines per transaction (and per publish)
SHOWN_ERRORS = 100  # line errors listed in the batch object; the error file and the results hold them all
MAX_CUSTOM_ID = 512
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


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None) -> None:
        super().__init__(message)
        self.error: dict[str, Any] = {"status": status, "code": code, "message": message, "field": field}
        self.custom_id: str | None = None  # kept with the refused line when it had a valid one


def _refusal(e: ApiError) -> _Refused:
    param = e.param if isinstance(e, OpenAIError) else None
    return _Refused(e.status, e.code, e.message, param)


class Builder:
    """Turns a batch's lines into jobs, one chunk per call to :meth:`add`."""

    def __init__(self, state: AppState, key: ApiKey, batch_id: str, endpoint: str) -> None:
        self.state, self.key, self.batch_id, self.endpoint = state, key, batch_id, endpoint
        # Duplicates are found among this chunk's custom_ids and, for earlier chunks, in SQL: the builder
        # holds no more than a chunk, however long the file.
        self._chunk_ids: set[str] = set()
        self._earlier: set[str] = set()  # this chunk's custom_ids that earlier chunks already hold
        self.lines = 0  # request lines taken (blank lines are skipped)
        self.valid = 0
        self.stopped = False  # the line limit was reached, or the batch was canceled while being read
        self.errors: list[dict[str, Any]] = []  # errors of the batch as a whole

    # -- one line ----------------------------------------------------------------------------------------
    def _custom_id(self, obj: dict[str, Any]) -> str:
        cid = obj.get("custom_id")
        if not isinstance(cid, str) or not cid:
            raise _Refused(400, "invalid_custom_id", "every line needs a custom_id: a non-empty string", "custom_id")
        if len(cid) > MAX_CUSTOM_ID or not storable(cid):
            raise _Refused(400, "invalid_custom_id",
                           f"custom_id must be at most {MAX_CUSTOM_ID} characters of storable text", "custom_id")
        if cid in self._chunk_ids or cid in self._earlier:
            dup = _Refused(400, "duplicate_custom_id", f"custom_id {cid!r} appears on an earlier line", "custom_id")
            dup.custom_id = cid
            raise dup
        self._chunk_ids.add(cid)
        return cid

    def _request(self, obj: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The genqueue job request of a line, and the prefix of its fields' names in errors."""
        if not {"method", "url", "body"} & obj.keys():
            if self.endpoint != "/v1/jobs":
                raise _Refused(400, "invalid_request",
                               "lines of a /v1/completions batch have OpenAI's form: custom_id, method, url, body",
                               "body")
            if "idempotency_key" in obj:
                raise _Refused(400, "unsupported_parameter", "batch lines are told apart by their custom_id; "
                               "idempotency_key is for POST /v1/jobs/bulk", "idempotency_key")
            return {k: v for k, v in obj.items() if k != "custom_id"}, ""  # genqueue's short form
        extra = sorted(obj.keys() - {"custom_id", "method", "url", "body"})
        if extra:
            raise _Refused(400, "unknown_parameter", f"unknown field {extra[0]!r}", extra[0])
        if obj.get("method") != "POST":
            raise _Refused(400, "invalid_method", "method must be \"POST\"", "method")
        url = obj.get("url")
        if url not in ENDPOINTS:
            raise _Refused(400, "unsupported_endpoint",
                           f"url {url!r} is not supported: batches run {' and '.join(ENDPOINTS)}", "url")
        if url != self.endpoint:
            raise _Refused(400, "mismatched_endpoint", f"this batch's endpoint is {self.endpoint}, not {url}", "url")
        body = obj.get("body")
        if not isinstance(body, dict):
            raise _Refused(400, "invalid_request", "body must be a JSON object", "body")
        if "idempotency_key" in body:
            raise _Refused(400, "unsupported_parameter", "batch lines are told apart by their custom_id; "
                           "idempotency_key is for POST /v1/jobs/bulk", "body.idempotency_key")
        if url == "/v1/completions":
            try:
                openai_compat.check_text_model(self.state, body.get("model"))
                return openai_compat.job_request(body), "body."
            except OpenAIError as e:
                raise _Refused(e.status, e.code, e.message, "body." + e.param if e.param else "body") from None
        return body, "body."

    @staticmethod
    def _parse(raw: bytes | None) -> dict[str, Any] | _Refused:
        if raw is None:
            return _Refused(400, "line_too_long", f"the line is longer than {MAX_LINE_BYTES} bytes", None)
        try:
            obj = loads(raw)
        except ValueError as e:
            return _Refused(400, "invalid_json", f"the line is {e}", None)
        if not isinstance(obj, dict):
            return _Refused(400, "invalid_request", "a line must be a JSON object", None)
        return obj

    def _line(self, obj: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        """(custom_id, the job's row); raises _Refused, carrying the line's custom_id once it is known."""
        cid = self._custom_id(obj)
        try:
            body, prefix = self._request(obj)
            try:
                p = jobs_service.prepare(self.state, self.key, body, None)
            except ApiError as e:
                raise _refusal(openai_compat.from_api_error(
                    e, prefix, completion=self.endpoint == "/v1/completions")) from None
        except _Refused as r:
            r.custom_id = cid
            raise
        p.row["batch_id"] = self.batch_id
        return cid, p.row

    # -- one chunk ---------------------------------------------------------------------------------------
    def add(self, lines: Iterable[Line]) -> bool:
        """Validates, stores and publishes one chunk of lines (at most CHUNK_LINES) in one transaction.
        False once the builder has stopped: read no more lines."""
        if self.stopped:
            return False
        parsed: list[tuple[int, dict[str, Any] | _Refused]] = []
        earlier_lines = self.lines
        for line_no, raw in lines:
            if raw is not None and not raw.strip():
                continue
            if self.lines >= self.state.settings.batch_max_lines:
                limit = self.state.settings.batch_max_lines
                self.errors.append({"code": "too_many_lines", "line": line_no, "param": None,
                                    "message": f"a batch holds at most {limit} lines; lines from {line_no} on "
                                               "were not read"})
                self.stopped = True
                break
            self.lines += 1
            parsed.append((line_no, self._parse(raw)))
        self._chunk_ids = set()
        self._earlier = self._stored_ids([obj for _, obj in parsed if isinstance(obj, dict)]) if earlier_lines else set()
        rows: list[dict[str, Any]] = []
        requests: list[dict[str, Any]] = []
        refused: list[str] = []
        for line_no, item in parsed:
            try:
                if isinstance(item, _Refused):
                    raise item
                cid, row = self._line(item)
            except _Refused as refusal:
                requests.append({"batch_id": self.batch_id, "line": line_no, "custom_id": refusal.custom_id,
                                 "job_id": None, "error": refusal.error})
                refused.append(str(refusal.error["code"]))
                continue
            rows.append(row)
            requests.append({"batch_id": self.batch_id, "line": line_no, "custom_id": cid, "job_id": row["id"],
                             "error": None})
        if not requests:
            return not self.stopped
        with self.state.db.session() as s:
            jobs_store.insert_jobs(s, rows)
            store.insert_requests(s, requests)
            store.add_progress(s, self.batch_id, len(requests), len(refused))
            s.commit()
            if rows and store.status_of(s, self.batch_id) == "cancelling":
                # Canceled while being read: this chunk's jobs are canceled before they are published.
                canceled = jobstate.cancel_queued(s, [r["id"] for r in rows])
                review_state.record_canceled(s, canceled)
                s.commit()
                self.stopped = True
                rows = []
        self.valid += len(requests) - len(refused)
        for code in refused:
            metrics.REFUSED.labels(code).inc()
        if rows:
            self.state.publisher.publish_now([queue.Publication(r["id"], r["model"], r["priority"], r["kind"])
                                              for r in rows])
            for model, n in Counter(r["model"] for r in rows).items():
                metrics.SUBMITTED.labels(model).inc(n)
            for r in rows:
                logs.job_event(log, "submitted", r["id"], model=r["model"], batch_id=self.batch_id)
        return not self.stopped

    def _stored_ids(self, objs: list[dict[str, Any]]) -> set[str]:
        """The custom_ids of these lines that earlier chunks already stored (one indexed query a chunk)."""
        candidates = {o["custom_id"] for o in objs if isinstance(o.get("custom_id"), str) and storable(o["custom_id"])}
        with self.state.db.session() as s:
            return store.stored_custom_ids(s, self.batch_id, candidates)

    def add_all(self, lines: Iterable[Line]) -> None:
        chunk: list[Line] = []
        for ln in lines:
            chunk.append(ln)
            if len(chunk) >= CHUNK_LINES:
                if not self.add(chunk):
                    return
                chunk = []
        self.add(chunk)

    def finish(self, error: dict[str, Any] | None = None) -> None:
        """Reading has ended: the batch is in progress, or failed when no line was valid."""
        if error is not None:
            self.errors.append(error)
        if self.lines == 0 and not self.errors:
            self.errors.append({"code": "empty_file", "line": None, "param": None,
                                "message": "the input holds no request lines"})
        now = utcnow()
        with self.state.db.session() as s:
            store.add_errors(s, self.batch_id, self.errors)
            if self.valid == 0:
                store.move(s, self.batch_id, ["validating"], "failed", {"failed_at": now})
            else:
                store.move(s, self.batch_id, ["validating"], "in_progress", {"in_progress_at": now})
            s.commit()


def create_from_file(state: AppState, key: ApiKey, req: BatchCreate) -> BatchObject:
    """OpenAI's batches.create: a batch of an uploaded file's lines."""
    endpoint = check_endpoint(req.endpoint)
    f = files_service.owned(state, key, req.input_file_id)
    if f.purpose != "batch":
        raise OpenAIError(400, "invalid_file", f"file {f.id} is not a batch input (its purpose is {f.purpose})",
                          "input_file_id")
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
    while True:
        with state.db.session() as s:
            ids = store.queued_job_ids(s, batch_id, CHUNK_LINES)
            canceled = jobstate.cancel_queued(s, ids)
            review_state.record_canceled(s, canceled)  # their job.canceled webhooks, in the same transaction
            s.commit()
        for job_id in canceled:
            logs.job_event(log, "canceled", job_id, batch_id=batch_id)
        if len(ids) < CHUNK_LINES:
            break
    return get(state, key, batch_id)
