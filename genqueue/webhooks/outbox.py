"""The webhook outbox: one row per event, written in the same transaction as the change it reports, so an
event is never sent for a change that rolled back nor lost for one that committed.

Events and what a job subscribes with ``webhook_events``:
- "completed": ``job.succeeded``, ``job.failed``, ``job.canceled``;
- "review": ``review.approved``, ``review.rejected`` (decisions on outputs that went to review).
An output that still needs review is never in a payload: ``job.succeeded`` of such a job carries
``"output": null`` and review status ``pending``; the output follows in ``review.approved``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from genqueue.db import bulk
from genqueue.db.models import WebhookDelivery

JOB_EVENTS = ("job.succeeded", "job.failed", "job.canceled")
REVIEW_EVENTS = ("review.approved", "review.rejected")
EVENTS = JOB_EVENTS + REVIEW_EVENTS


def subscribed(event: str, webhook_events: Sequence[str] | None) -> bool:
    group = "completed" if event in JOB_EVENTS else "review"
    return group in (webhook_events or ())


def payload(event: str, job: Any, review: dict[str, Any], deliverable: bool, at: dt.datetime) -> dict[str, Any]:
    """The Standard Webhooks envelope ``{type, timestamp, data}``. ``job`` is a Job row or a row of its
    columns; ``deliverable`` says whether the output may be shown."""
    data: dict[str, Any] = {
        "id": job.id, "model": job.model, "model_version": job.model_version, "kind": job.kind,
        "status": job.status, "metadata": job.metadata_ or {},
        "output": job.output if deliverable else None,
        "error": {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None,
        "review": review,
    }
    return {"type": event, "timestamp": at.isoformat().replace("+00:00", "Z"), "data": data}


def enqueue(session: Session, items: Sequence[tuple[Any, str, dict[str, Any], bool]], at: dt.datetime) -> int:
    """Add deliveries for ``(job, event, review, deliverable)`` items whose job has a webhook and
    subscribes to the event. Returns how many were added."""
    rows = [
        {"id": str(uuid.uuid4()), "job_id": job.id, "event": event, "url": job.webhook,
         "payload": payload(event, job, review, deliverable, at), "status": "pending", "attempts": 0,
         "next_attempt_at": at, "created_at": at}
        for job, event, review, deliverable in items
        if job.webhook and subscribed(event, job.webhook_events)
    ]
    if rows:
        bulk.insert_rows(session, WebhookDelivery, rows)
    return len(rows)
