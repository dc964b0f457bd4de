"""Retention: delete the outputs and images of jobs that ended long ago (GENQUEUE_RETENTION_DAYS).

The job row stays, with its review and audit rows: only ``output`` (set to NULL), the ``job_images`` rows
and the output copied into sent webhooks go, and the time they went is kept in the job's metrics as ``expired_at``, so that the API answers such a
job as expired (and its images with 410 ``expired``) rather than as missing. Succeeded, failed and canceled
jobs are swept alike; queued and running jobs, and outputs still waiting for a moderator (review pending or
escalated), are never touched.

The sweep works in small transactions (``retention_batch_size`` jobs each, with a pause between them), and on
PostgreSQL skips rows another transaction holds, so that it never makes the workers' writes or the API wait.
`genqueue gc` runs one sweep; `genqueue beat` runs one every ``retention_interval_s``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass

from sqlalchemy import delete, exists, null, select, update

from genqueue.db.models import Job, JobImage, Review, WebhookDelivery, utcnow
from genqueue.db.session import Database
from genqueue.enums import JobStatus, ReviewStatus

log = logging.getLogger(__name__)

ENDED = (JobStatus.succeeded.value, JobStatus.failed.value, JobStatus.canceled.value)
UNDECIDED = (ReviewStatus.pending.value, ReviewStatus.escalated.value)  # still a moderator's to see


@dataclass
class Sweep:
    jobs: int = 0  # jobs whose content was deleted
    images: int = 0  # image rows deleted
    batches: int = 0
    more: bool = False  # stopped at its time budget with more to delete


def expire(db: Database, older_than: dt.timedelta, *, batch_size: int = 200, pause_s: float = 0.05,
           now: dt.datetime | None = None, stop: threading.Event | None = None,
           budget_s: float | None = None) -> Sweep:
    """Delete the content of every job that ended before ``now - older_than`` (or as much as ``budget_s``
    seconds allow); returns what went."""
    started = time.monotonic()
    cutoff = (now or utcnow()) - older_than
    expired_at = (now or utcnow()).isoformat()
    done = Sweep()
    while stop is None or not stop.is_set():
        jobs, images = _one_batch(db, cutoff, expired_at, batch_size)
        if not jobs:
            break
        done.jobs += jobs
        done.images += images
        done.batches += 1
        if jobs < batch_size:
            break
        if budget_s is not None and time.monotonic() - started >= budget_s:
            done.more = True
            break
        time.sleep(pause_s)
    if done.jobs:
        log.info("retention: deleted the content of %d jobs (%d images) that ended before %s",
                 done.jobs, done.images, cutoff.isoformat())
    return done


def _one_batch(db: Database, cutoff: dt.datetime, expired_at: str, batch_size: int) -> tuple[int, int]:
    undecided = exists().where(Review.job_id == Job.id, Review.status.in_(UNDECIDED))
    with db.session() as s:
        rows = s.execute(
            select(Job.id, Job.metrics)
            # Only jobs that still have content: once expired, `output` is SQL NULL and the row is skipped.
            .where(Job.status.in_(ENDED), Job.finished_at < cutoff, Job.output.is_not(None), ~undecided)
            .limit(batch_size)
            .with_for_update(skip_locked=True, of=Job)  # PostgreSQL; SQLite has no row locks to skip
        ).all()
        if not rows:
            return 0, 0
        ids = [r.id for r in rows]
        images = s.execute(delete(JobImage).where(JobImage.job_id.in_(ids))).rowcount or 0  # type: ignore[attr-defined]
        s.execute(update(Job).where(Job.id.in_(ids)).values(output=null()))
        # The copies in sent webhooks go too (one still being retried keeps its payload until it is done).
        sent = s.execute(select(WebhookDelivery.id, WebhookDelivery.payload).where(
            WebhookDelivery.job_id.in_(ids), WebhookDelivery.status != "pending")).all()
        cleared = [{"id": d.id, "payload": {**d.payload, "data": {**d.payload["data"], "output": None}}}
                   for d in sent if (d.payload or {}).get("data", {}).get("output") is not None]
        if cleared:
            s.execute(update(WebhookDelivery), cleared)
        s.execute(update(Job), [{"id": r.id, "metrics": {**(r.metrics or {}), "expired_at": expired_at}}
                                for r in rows])
        s.commit()
    return len(ids), int(images)


def expired_at(metrics: dict[str, object] | None) -> dt.datetime | None:
    """When retention deleted a job's content (from its metrics), or None while it is kept."""
    value = (metrics or {}).get("expired_at")
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else None
