"""A batch's result lines, in input order, in OpenAI's batch output format, read page by page from SQL.

Every line has ``id``, ``custom_id``, ``response`` ({"status_code", "request_id", "body"}) and ``error``.
A succeeded line's body is the endpoint's answer (a completion object, or the job as GET /v1/jobs/{id}
shows it); a refused or failed line's body is an error in OpenAI's shape. The results of
GET /v1/batches/{id}/results also carry ``line``, ``status`` and ``job_id``, and list unfinished lines with
``response`` null.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from genqueue.db.models import Batch, BatchRequest, Job, Review
from genqueue.enums import JobStatus
from genqueue_api.services import jobs as jobs_service
from genqueue_api.services import openai_compat
from genqueue_api.services.openai_compat import OpenAIError
from genqueue_api.state import AppState
from genqueue_api.store import batches as store
from genqueue_api.store import jobs as jobs_store

PAGE = 500  # line numbers read per query


def request_id(batch: Batch, line: int) -> str:
    return f"batch_req_{batch.id.removeprefix('batch_')}_{line}"


def _response(batch: Batch, req: BatchRequest, job: Job | None, review: Review | None) -> dict[str, Any] | None:
    if job is None:
        err = req.error or {}
        e = OpenAIError(int(err.get("status", 400)), str(err.get("code", "invalid_request")),
                        str(err.get("message", "")), err.get("field"), err.get("details"))
        return {"status_code": e.status, "request_id": None, "body": e.body()}
    if job.status == JobStatus.succeeded.value:
        body = (openai_compat.completion(job) if batch.endpoint == "/v1/completions"
                else jobs_service.to_out(job, review).model_dump(mode="json"))
        return {"status_code": 200, "request_id": job.id, "body": body}
    if job.status in (JobStatus.failed.value, JobStatus.canceled.value):
        e = openai_compat.job_error(job)
        return {"status_code": e.status, "request_id": job.id, "body": e.body()}
    return None  # queued or running


def line(batch: Batch, req: BatchRequest, job: Job | None, review: Review | None, full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": request_id(batch, req.line), "custom_id": req.custom_id}
    if full:
        out.update(line=req.line, status=str(job.status) if job is not None else "invalid",
                   job_id=job.id if job is not None else None)
    out.update(response=_response(batch, req, job, review), error=None)
    return out


def stream(state: AppState, batch: Batch, which: store.Which) -> Iterator[bytes]:
    """JSONL, a window of lines per query in a short session of its own, so that a slow reader holds neither
    the results nor a connection. The output and error files skip lines, so a window may be empty; the
    stream ends at the batch's last line stored."""
    after = 0
    while True:
        with state.db.session() as s:
            page = store.lines_page(s, batch.id, after, PAGE, which)
            reviews = jobs_store.reviews_for(s, [j.id for _, j in page if j is not None])
            done = not page and after >= store.last_line(s, batch.id)
        if done:
            return
        if page:
            yield b"".join(
                json.dumps(line(batch, req, job, reviews.get(job.id) if job else None, which == "all"),
                           separators=(",", ":")).encode() + b"\n"
                for req, job in page)
        after += PAGE
