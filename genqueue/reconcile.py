"""The reconciler: re-publishes jobs that SQL says should be in Redis (DESIGN.md invariant 2).

It covers a publish that failed (Redis down at submit), messages lost with a Redis restart (the broker may
keep nothing on disk), and jobs left `running` under an expired lease by a dead worker. Re-publishing is
always safe: a worker re-reads the row and skips anything no longer `queued` or leased elsewhere.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from celery import Celery
from sqlalchemy import and_, or_, select, update

from genqueue import queue
from genqueue.db.models import Job, utcnow
from genqueue.db.session import Database
from genqueue.enums import JobStatus

log = logging.getLogger(__name__)


def reconcile_once(db: Database, app: Celery, *, unpublished_grace_s: float = 2.0,
                   republish_after_s: float = 600.0, limit: int = 1000) -> int:
    """Publish what needs publishing; returns how many jobs were published."""
    now = utcnow()
    q = (
        select(Job.id, Job.model, Job.priority)
        .where(or_(
            # Never published: the API's publish failed (the grace avoids racing its own publish).
            and_(Job.status == JobStatus.queued.value, Job.published_at.is_(None),
                 Job.created_at < now - dt.timedelta(seconds=unpublished_grace_s)),
            # Published long ago and still queued: the message may have died with Redis.
            and_(Job.status == JobStatus.queued.value,
                 Job.published_at < now - dt.timedelta(seconds=republish_after_s)),
            # A worker died mid-job: its lease ran out and nobody will ack or redeliver soon.
            and_(Job.status == JobStatus.running.value, Job.lease_expires_at < now,
                 or_(Job.published_at.is_(None), Job.published_at < Job.lease_expires_at)),
        ))
        .order_by(Job.priority, Job.created_seq)
        .limit(limit)
    )
    with db.session() as s:
        rows = s.execute(q).all()
        if not rows:
            return 0
        queue.publish(app, [queue.Publication(r.id, r.model, r.priority) for r in rows])
        s.execute(update(Job).where(Job.id.in_([r.id for r in rows])).values(published_at=now))
        s.commit()
    log.info("reconciler published %d job(s)", len(rows))
    return len(rows)


class Reconciler(threading.Thread):
    """Runs reconcile_once every ``interval_s`` in the background of an API process."""

    def __init__(self, db: Database, app: Celery, interval_s: float, republish_after_s: float) -> None:
        super().__init__(name="gq-reconciler", daemon=True)
        self.db, self.app = db, app
        self.interval_s, self.republish_after_s = interval_s, republish_after_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                reconcile_once(self.db, self.app, republish_after_s=self.republish_after_s)
            except Exception as e:  # Redis or SQL still down: try again next round
                log.warning("reconciler: %s: %s", e.__class__.__name__, e)

    def stop(self) -> None:
        self._stop_event.set()
