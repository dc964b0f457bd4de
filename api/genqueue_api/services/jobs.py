"""Job service: validation against the model registry, idempotency, insert-then-publish, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from genqueue import jobstate, logs, queue, retention
from genqueue.db.models import ApiKey, Job, Review, utcnow
from genqueue.enums import JobStatus, ReviewPolicy, ReviewStatus, Role
from genqueue.registry import ModelKind, UnknownModel
from genqueue.review import policy as review_policy
from genqueue.review import state as review_state
from genqueue.schemas import (
    BulkItem,
    ErrorBody,
    ErrorResponse,
    ImageInput,
    JobAccepted,
    JobCreate,
    JobError,
    JobOut,
    ReviewFlag,
    ReviewInfo,
    TextInput,
    storable,
)
from genqueue.tokens import count_prompt_tokens, surely_fits
from genqueue.webhooks import guard
from genqueue_api import metrics, quotas
from genqueue_api.errors import ApiError, not_found, validation_details
from genqueue_api.state import AppState
from genqueue_api.store import jobs as store

log = logging.getLogger(__name__)
BulkAnswer = JobOut | JobAccepted | ErrorResponse  # one bulk item's answer


@dataclass
class Prepared:
    """A validated request, ready to become a row."""

    row: dict[str, Any]
    idempotency_key: str | None
    request_hash: str | None  # only for requests with an idempotency key


def _request_hash(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _invalid(e: ValidationError, prefix: str = "") -> ApiError:
    details = validation_details(list(e.errors()), strip_body=False)
    for d in details:
        d["field"] = prefix + d["field"] if d["field"] else prefix.rstrip(".")
    fields = ", ".join(d["field"] for d in details)
    return ApiError(422, "validation_error", f"invalid request: {fields}", details)


def prepare(state: AppState, key: ApiKey, body: Any, idempotency_key: str | None,
            now: dt.datetime | None = None) -> Prepared:
    """Validate one job request (``now``: its ``created_at``, one for a whole bulk). Raises ApiError in the
    contract's error shape."""
    if not isinstance(body, dict):
        raise ApiError(422, "validation_error", "a job request must be a JSON object", [{"field": "", "message": "not an object"}])
    raw = dict(body)
    raw.pop("idempotency_key", None)
    try:
        req = JobCreate.model_validate(raw)
    except ValidationError as e:
        raise _invalid(e) from None
    state.registry.refresh_if_stale()
    try:
        entry = state.registry.resolve(req.model)
    except UnknownModel:
        raise ApiError(404, "unknown_model", f"model {req.model!r} is not served here",
                       [{"field": "model", "message": "see GET /v1/models"}]) from None
    m = entry.manifest
    inp: TextInput | ImageInput
    if m.kind is ModelKind.text:
        assert m.text is not None
        try:
            inp = TextInput.model_validate(req.input)
        except ValidationError as e:
            raise _invalid(e, "input.") from None
        ctx = m.text.context_length
        if inp.max_new_tokens > ctx:
            raise ApiError(422, "validation_error", "invalid request: input.max_new_tokens",
                           [{"field": "input.max_new_tokens", "message": f"must be at most {ctx} for {entry.ref}",
                             "type": "less_than_equal"}])
        tok = state.tokenizer(entry)
        if not surely_fits(tok, inp.prompt, m.text.prepend_bos, ctx) and (
                n_tokens := count_prompt_tokens(tok, inp.prompt, m.text.prepend_bos)) >= ctx:
            raise ApiError(422, "prompt_too_long",
                           f"the prompt is {n_tokens} tokens; {entry.ref} allows at most {ctx - 1}",
                           [{"field": "input.prompt", "message": f"{n_tokens} tokens >= context {ctx}"}])
    else:
        assert m.image is not None
        try:
            inp = ImageInput.model_validate(req.input)
        except ValidationError as e:
            raise _invalid(e, "input.") from None
        if inp.class_label is not None:
            if m.image.num_classes == 0:
                raise ApiError(422, "validation_error", "invalid request: input.class_label",
                               [{"field": "input.class_label", "message": f"{entry.ref} is unconditional"}])
            if inp.class_label >= m.image.num_classes:
                raise ApiError(422, "validation_error", "invalid request: input.class_label",
                               [{"field": "input.class_label",
                                 "message": f"must be below {m.image.num_classes} for {entry.ref}"}])
    if req.webhook is not None:
        try:
            guard.check_submit(req.webhook, guard.parse_allow(state.settings.webhook_allow_private))
        except guard.UnsafeTarget as e:
            raise ApiError(422, "validation_error", "invalid request: webhook",
                           [{"field": "webhook", "message": str(e), "type": "unsafe_webhook"}]) from None
    if req.review is ReviewPolicy.none and not (key.role == Role.admin.value or key.trusted):
        raise ApiError(403, "forbidden", 'review "none" is for admin or trusted keys only')
    if inp.seed is None:
        # Recorded, so the job can be reproduced. Not a secret: the module's Mersenne Twister (reseeded in
        # forked children) instead of secrets.randbelow, whose two urandom calls were 11 us of a bulk item's time.
        inp.seed = random.getrandbits(31)
    if isinstance(inp, ImageInput) and inp.class_label is None and m.image and m.image.num_classes > 0:
        # A conditional model needs a class: draw one from the job's seed and record it.
        inp.class_label = random.Random(inp.seed).randrange(m.image.num_classes)
    job_id = str(uuid.uuid4())
    row: dict[str, Any] = {
        "id": job_id,
        "owner_id": key.id,
        "model": m.name,
        "model_version": m.version,
        "kind": m.kind.value,
        "status": JobStatus.queued.value,
        "priority": req.priority,
        "input": inp.model_dump(),
        "metadata_": req.metadata,
        "review_policy": req.review.value,
        "webhook": req.webhook,
        "webhook_events": list(req.webhook_events),
        "idempotency_key": idempotency_key,
        # The body's hash is what tells a replay from a conflict; requests without a key never need it.
        "request_hash": _request_hash(raw) if idempotency_key is not None else None,
        "metrics": {},
        "attempts": 0,
        "created_at": now or utcnow(),
    }
    return Prepared(row=row, idempotency_key=idempotency_key, request_hash=row["request_hash"])


def to_out(job: Job, review: Review | None) -> JobOut:
    if review is not None:
        info = ReviewInfo(status=ReviewStatus(review.status), flags=[ReviewFlag(**f) for f in review.flags or []],
                          decided_by=review.decided_by, reason=review.reason)
    else:
        info = ReviewInfo(status=review_policy.shown_status(job.status, job.review_policy, None))
    return JobOut(
        id=job.id, model=job.model, model_version=job.model_version, kind=job.kind,  # type: ignore[arg-type]
        status=JobStatus(job.status), priority=job.priority, input=job.input, metadata=job.metadata_ or {},
        output=job.output,
        error=JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        review=info, attempts=job.attempts, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, metrics={k: v for k, v in (job.metrics or {}).items() if k != "expired_at"},
        batch_id=job.batch_id, expired_at=retention.expired_at(job.metrics),
    )


def out_from_row(row: dict[str, Any]) -> JobOut:
    """The Job object of a row just inserted (queued, no review row yet)."""
    review = review_policy.shown_status(JobStatus.queued.value, row["review_policy"], None)
    return JobOut(id=row["id"], model=row["model"], model_version=row["model_version"], kind=row["kind"],
                  status=JobStatus.queued, priority=row["priority"], input=row["input"], metadata=row["metadata_"],
                  review=ReviewInfo(status=review), attempts=0, created_at=row["created_at"])


def outs(session: Session, jobs: list[Job]) -> list[JobOut]:
    reviews = store.reviews_for(session, [j.id for j in jobs])
    return [to_out(j, reviews.get(j.id)) for j in jobs]


def _conflict(key: str) -> ApiError:
    return ApiError(409, "idempotency_conflict",
                    f"Idempotency-Key {key!r} was already used with a different request body")


def _publications(rows: list[dict[str, Any]]) -> list[queue.Publication]:
    return [queue.Publication(r["id"], r["model"], r["priority"], r["kind"]) for r in rows]


def create_job(state: AppState, session: Session, key: ApiKey, body: Any,
               idempotency_key: str | None) -> tuple[JobOut, bool]:
    """Returns (job, created). A replay of the same key and body returns the original job."""
    if idempotency_key is not None:
        refuse_body_key(body)
        existing = store.by_idempotency_keys(session, key.id, [idempotency_key]).get(idempotency_key)
        if existing is not None:
            raw = dict(body) if isinstance(body, dict) else body
            if existing.request_hash != _request_hash(raw):
                raise _conflict(idempotency_key)
            return outs(session, [existing])[0], False
    p = prepare_new(state, key, body, idempotency_key)
    quotas.admit(state, key.id, [p.row["id"]])  # after validation: a refused request uses no quota
    try:
        state.job_inserter().insert(p.row)  # committed with the other submits that arrived meanwhile
    except IntegrityError:
        session.rollback()  # end this session's read snapshot (SQLite), so that the winner's row is seen
        quotas.release(state, key.id, [p.row["id"]])
        if idempotency_key is None:
            raise
        # A concurrent request with the same Idempotency-Key won the race: answer with its job.
        existing = store.by_idempotency_keys(session, key.id, [idempotency_key]).get(idempotency_key)
        if existing is None:
            raise
        if existing.request_hash != p.request_hash:
            raise _conflict(idempotency_key) from None
        return outs(session, [existing])[0], False
    return submitted(state, p.row), True


def refuse_body_key(body: Any) -> None:
    if isinstance(body, dict) and "idempotency_key" in body:
        # Only bulk items carry the key in the body; here the body would be hashed with it on a replay and
        # without it on the first request, and the replay would be refused as a conflict.
        metrics.REFUSED.labels("validation_error").inc()
        raise ApiError(422, "validation_error", "invalid request: idempotency_key",
                       [{"field": "idempotency_key", "message": "send it as the Idempotency-Key header"}])


def prepare_new(state: AppState, key: ApiKey, body: Any, idempotency_key: str | None) -> Prepared:
    """A single submit's row, counted as refused (by its error code) when it is not valid."""
    refuse_body_key(body)
    try:
        return prepare(state, key, body, idempotency_key)
    except ApiError as e:
        metrics.REFUSED.labels(e.code).inc()
        raise


def submitted(state: AppState, row: dict[str, Any]) -> JobOut:
    """A single submit whose row is committed: hand it to the publisher and answer with it."""
    # The answer waited for the COMMIT of its own row (and of the rows that joined its group meanwhile, never
    # for more); the publisher coalesces the publishes of every job committed within its window into one
    # message per model and priority.
    state.publisher.submit(_publications([row]))
    metrics.SUBMITTED.labels(row["model"]).inc()
    logs.job_event(log, "submitted", row["id"], model=row["model"], batch_id=row.get("batch_id"))
    return out_from_row(row)


def create_bulk(state: AppState, session: Session, key: ApiKey, items: list[Any],
                minimal: bool = False) -> list[BulkAnswer]:
    """Each item succeeds or fails alone; valid rows go in with one INSERT and out in one pipeline. With
    ``minimal`` a job is answered by its id, model and status alone (``Prefer: return=minimal``)."""
    try:
        results, refused = _create_bulk_once(state, session, key, items, minimal)
    except IntegrityError:
        # A concurrent request stored one of these idempotency keys between the look-up and the INSERT, which
        # rolled back as a whole: look the keys up again, so that those items become replays (or conflicts)
        # and the others go in.
        session.rollback()
        results, refused = _create_bulk_once(state, session, key, items, minimal)
    for code in refused:
        metrics.REFUSED.labels(code).inc()
    return results


def _create_bulk_once(state: AppState, session: Session, key: ApiKey, items: list[Any],
                      minimal: bool) -> tuple[list[BulkAnswer], list[str]]:
    results: list[BulkAnswer | None] = [None] * len(items)
    refused: list[str] = []
    keys = [str(it["idempotency_key"]) for it in items if isinstance(it, dict) and it.get("idempotency_key")]
    # A key a store cannot hold (U+0000, a lone surrogate) cannot even be looked up; the item's own validation
    # refuses it below.
    existing = store.by_idempotency_keys(session, key.id, [k for k in keys if storable(k)])
    prepared: list[tuple[int, Prepared]] = []
    seen_keys: dict[str, int] = {}
    now = utcnow()
    for i, item in enumerate(items):
        try:
            ik = item.get("idempotency_key") if isinstance(item, dict) else None
            if ik is not None:
                try:
                    BulkItem.model_validate(item)  # validates the key's type and length too
                except ValidationError as e:
                    raise _invalid(e) from None
                if ik in existing:
                    raw = dict(item)
                    raw.pop("idempotency_key", None)
                    if existing[ik].request_hash != _request_hash(raw):
                        raise _conflict(ik)
                    job = existing[ik]
                    results[i] = (JobAccepted(id=job.id, model=job.model, status=JobStatus(job.status)) if minimal
                                  else outs(session, [job])[0])
                    continue
                if ik in seen_keys:
                    raise ApiError(409, "idempotency_conflict", f"idempotency_key {ik!r} appears twice in this request")
                seen_keys[ik] = i
            prepared.append((i, prepare(state, key, item, ik, now)))
        except ApiError as e:
            results[i] = ErrorResponse(error=ErrorBody(code=e.code, message=e.message, details=e.details))
            refused.append(e.code)
    if prepared:
        # Only the valid new items are charged; past the key's in-flight limit the rest are refused alone.
        admitted, limit = quotas.admit(state, key.id, [p.row["id"] for _, p in prepared])
        for i, _p in prepared[admitted:]:
            results[i] = ErrorResponse(error=ErrorBody(**quotas.refused_item(limit)))
            refused.append("rate_limited")
        prepared = prepared[:admitted]
    rows = [p.row for _, p in prepared]
    if rows:
        try:
            store.insert_jobs(session, rows)
            session.commit()
        except IntegrityError:
            quotas.release(state, key.id, [r["id"] for r in rows])
            raise
        # A bulk is chunked now, on this request's thread: it already amortises the round trip.
        state.publisher.publish_now(_publications(rows))
        # The new rows are still in memory: answer from them rather than reading 1000 rows back.
        for i, p in prepared:
            results[i] = (JobAccepted(id=p.row["id"], model=p.row["model"], status=JobStatus.queued) if minimal
                          else out_from_row(p.row))
        for model, n in Counter(r["model"] for r in rows).items():
            metrics.SUBMITTED.labels(model).inc(n)
        logs.jobs_events(log, "submitted", rows)
    return [r for r in results if r is not None], refused


def get_job(session: Session, key: ApiKey, job_id: str) -> JobOut:
    job = store.get_owned(session, job_id, None if key.role == Role.admin.value else key.id)
    if job is None:
        raise not_found()
    return outs(session, [job])[0]


def reload(state: AppState, key: ApiKey, job_id: str) -> JobOut:
    """The caller's job, read in a session of its own."""
    with state.db.session() as s:
        return get_job(s, key, job_id)


async def wait_for(state: AppState, key: ApiKey, job: JobOut, seconds: float) -> JobOut:
    """Hold the answer until the job is terminal or the time is up (Prefer: wait=N). Workers announce
    finished jobs over Redis pub/sub; without those notifications this falls back to polling SQL."""
    if job.status.terminal or seconds <= 0:
        return job
    listener = state.listener
    event = listener.register(job.id) if listener is not None else None
    try:
        deadline = time.monotonic() + seconds
        # Re-read once after registering: the job may have finished before the subscription saw it.
        job = await run_in_threadpool(reload, state, key, job.id)
        while not job.status.terminal and not state.stopping and (left := deadline - time.monotonic()) > 0:
            if event is not None and listener is not None and listener.connected:
                # At most 5 s per wait: a cancel publishes nothing, so the row is re-read now and then.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout=min(left, 5.0))
                event.clear()
            else:
                await asyncio.sleep(min(left, 0.25))
            job = await run_in_threadpool(reload, state, key, job.id)
    finally:
        if event is not None and listener is not None:
            listener.unregister(job.id, event)
    return job


def cancel_job(session: Session, key: ApiKey, job_id: str) -> JobOut:
    job = store.get_owned(session, job_id, None if key.role == Role.admin.value else key.id)
    if job is None:
        raise not_found()
    if not jobstate.cancel(session, job_id):
        session.rollback()
        raise ApiError(409, "job_finished", f"job {job_id} is already {job.status}; only queued or running jobs can be canceled")
    review_state.record_canceled(session, [job_id])  # its job.canceled webhook, in the same transaction
    session.commit()
    session.refresh(job)
    logs.job_event(log, "canceled", job_id, model=job.model)
    return outs(session, [job])[0]
