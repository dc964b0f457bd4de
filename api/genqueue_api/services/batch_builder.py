"""Turning a batch's lines into jobs, a chunk at a time.

Each call to :meth:`Builder.add` takes up to CHUNK_LINES lines: it validates every line alone (the line
envelope, its custom_id, then the job request through the submit path's own ``prepare``), inserts the
chunk's jobs and one ``batch_requests`` row per line, COMMITS, and publishes the jobs like a bulk submit.
A refused line keeps its line number, field and message; the others go through. The valid lines are
charged to the key's quotas as a bulk's items are: the lines past its jobs-in-flight (or jobs-per-minute)
limit are refused with the quota's error, 429 ``rate_limited``, and the others run. The builder holds one chunk
at most: duplicate custom_ids of earlier chunks are found with one indexed query per chunk.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

from genqueue import jobstate, logs, queue
from genqueue.db.models import ApiKey, utcnow
from genqueue.openai_schemas import ENDPOINTS
from genqueue.review import state as review_state
from genqueue.schemas import storable
from genqueue_api import metrics, quotas
from genqueue_api.errors import ApiError
from genqueue_api.services import jobs as jobs_service
from genqueue_api.services import openai_compat
from genqueue_api.services.jsonl import MAX_LINE_BYTES, Line, loads
from genqueue_api.services.openai_compat import OpenAIError
from genqueue_api.state import AppState
from genqueue_api.store import batches as store
from genqueue_api.store import jobs as jobs_store

log = logging.getLogger(__name__)

CHUNK_LINES = 1000  # lines per transaction (and per publish)
MAX_CUSTOM_ID = 512


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
        rows = self._charge(rows, requests, refused)
        with self.state.db.session() as s:
            try:
                jobs_store.insert_jobs(s, rows)
                store.insert_requests(s, requests)
                store.add_progress(s, self.batch_id, len(requests), len(refused))
                s.commit()
            except BaseException:
                quotas.release(self.state, self.key.id, [r["id"] for r in rows])  # none of them was stored
                raise
            if rows and store.status_of(s, self.batch_id) == "cancelling":
                # Canceled while being read: this chunk's jobs are canceled before they are published.
                canceled = jobstate.cancel_queued(s, [r["id"] for r in rows])
                review_state.record_canceled(s, canceled)
                s.commit()
                quotas.release(self.state, self.key.id, canceled)
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
            logs.jobs_events(log, "submitted", rows, batch_id=self.batch_id)
        return not self.stopped

    def _charge(self, rows: list[dict[str, Any]], requests: list[dict[str, Any]],
                refused: list[str]) -> list[dict[str, Any]]:
        """Charges the chunk's valid lines to the key's quotas, as a bulk's items are (validation first, so
        that refused lines use none): the lines past a limit are refused with the quota's error, in place in
        ``requests`` and ``refused``. Returns the rows that may be stored."""
        if not rows:
            return rows
        admitted, error = quotas.admit_lines(self.state, self.key.id, [r["id"] for r in rows])
        if error is None:
            return rows
        held = {r["id"] for r in rows[admitted:]}
        for req in requests:
            if req["job_id"] in held:
                req["job_id"] = None
                req["error"] = {"status": 429, "code": error["code"], "message": error["message"], "field": None,
                                "details": error["details"]}
                refused.append(error["code"])
        return rows[:admitted]

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
