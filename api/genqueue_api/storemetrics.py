"""Gauges the API reads from SQL when /metrics is scraped: jobs waiting and running, and the oldest queued
job's age (the review queue's gauges are api/genqueue_api/review_metrics.py's). Every API replica reports the same values (aggregate them with max, not sum).

Only indexed, bounded queries run here (counts on ``jobs.status`` and ``reviews.status``, the oldest queued
row), so a scrape stays cheap on a large jobs table; `genqueue status` gives the full picture.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from sqlalchemy import func, select

from genqueue.db.models import Job, utcnow
from genqueue.db.session import Database
from genqueue.enums import JobStatus

_ACTIVE = (JobStatus.queued.value, JobStatus.running.value)


def render(db: Database) -> bytes:
    reg = CollectorRegistry()
    jobs = Gauge("genqueue_jobs", "Jobs in SQL by status (queued and running only)", ["status"], registry=reg)
    oldest = Gauge("genqueue_oldest_queued_job_age_seconds", "Age of the oldest queued job (0 when none)",
                   registry=reg)
    with db.session() as s:
        counts = dict(s.execute(select(Job.status, func.count()).where(Job.status.in_(_ACTIVE))  # type: ignore[arg-type]
                                .group_by(Job.status)).all())
        first = s.execute(select(func.min(Job.created_at)).where(Job.status == JobStatus.queued.value)).scalar()
    for st in _ACTIVE:
        jobs.labels(st).set(counts.get(JobStatus(st), 0))
    oldest.set(0 if first is None else max(0.0, (utcnow() - first).total_seconds()))
    return generate_latest(reg)
