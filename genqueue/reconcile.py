"""The reconciler: re-publishes jobs that SQL says should be in Redis (DESIGN.md invariant 2).

It covers a publish that failed (Redis down at submit), messages lost with a Redis restart (the broker may
keep nothing on disk: noticed within one pass by counting the messages Redis holds), and jobs left `running`
under an expired lease by a dead worker. Re-publishing is
always safe: a worker re-reads the row and skips anything no longer `queued` or leased elsewhere.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from celery import Celery
from sqlalchemy import and_, func, or_, select, update

from genqueue import logs, queue
from genqueue.db.models import Job, utcnow
from genqueue.db.session import Database
from genqueue.enums import JobStatus

log = logging.getLogger(__name__)


# kombu's Redis transport: a sorted set of the messages delivered to consumers and not acked yet, scored by
# delivery time. A live worker claims what it is delivered within milliseconds, so a job still queued in SQL
# behind an entry older than the grace was delivered to a worker that died; Redis itself would give it
# back only after the visibility timeout (an hour by default).
UNACKED_INDEX_KEY = "unacked_index"


def _broker_lost_messages(db: Database, app: Celery, published_before: dt.datetime) -> bool:
    """Whether Redis holds fewer messages than SQL has queued jobs published before ``published_before``:
    then some were lost (a Redis restart or flush, a worker killed between taking a message and recording
    it as unacked, messages a killed worker held), and waiting out ``republish_after_s`` would leave those
    jobs idle for minutes. Messages still in a list (a model no worker serves yet) or delivered within the
    grace (a worker is claiming them) count as present, so they are not published again and again. The
    count errs towards "present" (a recent delivery of a job that is running now counts too): a loss it
    misses is still caught by ``republish_after_s``."""
    delivered_since = published_before.timestamp()
    with db.session() as s:
        counts = dict(s.execute(  # type: ignore[arg-type]
            select(Job.model, func.count()).where(Job.status == JobStatus.queued.value, Job.published_at < published_before)
            .group_by(Job.model)
        ).all())
    if not counts:
        return False
    keys = sorted({k for m in counts for k in queue.bucket_keys(queue.queue_name(m))})
    pipe = queue.shared_redis(str(app.conf.broker_url)).pipeline(transaction=False)
    for k in keys:
        pipe.llen(k)
    pipe.zcount(UNACKED_INDEX_KEY, delivered_since, "+inf")
    return sum(int(n) for n in pipe.execute()) < sum(counts.values())


def reconcile_once(db: Database, app: Celery, *, unpublished_grace_s: float = 2.0,
                   republish_after_s: float = 600.0, lost_grace_s: float = 30.0, limit: int = 1000) -> int:
    """Publish what needs publishing; returns how many jobs were published.

    ``lost_grace_s``: when Redis holds fewer messages than there are queued jobs published that long ago,
    those jobs are published again now rather than after ``republish_after_s``. The grace covers a message
    between a worker's fetch and its claim."""
    now = utcnow()
    stale = now - dt.timedelta(seconds=republish_after_s)
    if _broker_lost_messages(db, app, now - dt.timedelta(seconds=lost_grace_s)):
        stale = max(stale, now - dt.timedelta(seconds=lost_grace_s))
        log.warning("reconciler: Redis holds fewer messages than there are queued jobs; publishing again "
                    "those published over %.0f s ago", lost_grace_s)
    q = (
        select(Job.id, Job.model, Job.priority)
        .where(or_(
            # Never published: the API's publish failed (the grace avoids racing its own publish).
            and_(Job.status == JobStatus.queued.value, Job.published_at.is_(None),
                 Job.created_at < now - dt.timedelta(seconds=unpublished_grace_s)),
            # Published long ago and still queued: the message may have died with Redis.
            and_(Job.status == JobStatus.queued.value, Job.published_at < stale),
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
    for r in rows:
        logs.job_event(log, "republished", r.id, model=r.model)
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
