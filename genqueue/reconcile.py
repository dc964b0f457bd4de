"""The reconciler: re-publishes jobs that SQL says should be in Redis.

It covers a publish that failed (Redis down at submit, or the API died between its COMMIT and its
publish), messages lost with a Redis restart (the broker may keep nothing on disk: noticed within one pass by
counting the messages Redis holds against the messages SQL says carry queued jobs), and jobs left `running`
under an expired lease by a dead worker. It publishes in chunks, like the API. Re-publishing is always safe:
a worker re-reads the rows and skips anything no longer `queued` or leased elsewhere.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from genqueue import jobstate, queue
from genqueue.db.models import utcnow
from genqueue.db.session import Database
from genqueue.publisher import Publisher

log = logging.getLogger(__name__)


# kombu's Redis transport: a sorted set of the messages delivered to consumers and not acked yet, scored by
# delivery time. A live worker claims what it is delivered within milliseconds, so a job still queued in SQL
# behind an entry older than the grace was delivered to a worker that died; Redis itself would give it
# back only after the visibility timeout (an hour by default).
UNACKED_INDEX_KEY = "unacked_index"


def _broker_lost_messages(db: Database, publisher: Publisher, published_before: dt.datetime) -> bool:
    """Whether Redis holds fewer messages than SQL says still carry queued jobs published before
    ``published_before``: then some were lost (a Redis restart or flush, a worker killed between taking a
    message and recording it as unacked, messages a killed worker held), and waiting out
    ``republish_after_s`` would leave those jobs idle for minutes. Messages still in a list (a model no
    worker serves yet) or delivered within the grace (a worker is claiming them) count as present. The count
    errs towards "present" (a message whose jobs now run counts too): a loss it misses is still caught by
    ``republish_after_s``."""
    with db.session() as s:
        counts = jobstate.queued_messages(s, published_before)
    if not counts:
        return False
    keys = sorted({k for m in counts for k in queue.bucket_keys(queue.queue_name(m))})
    pipe = queue.shared_redis(str(publisher.app.conf.broker_url)).pipeline(transaction=False)
    for k in keys:
        pipe.llen(k)
    pipe.zcount(UNACKED_INDEX_KEY, published_before.timestamp(), "+inf")
    return sum(int(n) for n in pipe.execute()) < sum(counts.values())


def reconcile_once(db: Database, publisher: Publisher, *, unpublished_grace_s: float = 2.0,
                   republish_after_s: float = 600.0, lost_grace_s: float = 30.0, limit: int = 5000) -> int:
    """Publish what needs publishing; returns how many jobs were published.

    ``lost_grace_s``: when Redis holds fewer messages than there are messages of queued jobs published that
    long ago, those jobs are published again now rather than after ``republish_after_s``. The grace covers a
    message between a worker's fetch and its claim."""
    now = utcnow()
    stale = now - dt.timedelta(seconds=republish_after_s)
    if _broker_lost_messages(db, publisher, now - dt.timedelta(seconds=lost_grace_s)):
        stale = max(stale, now - dt.timedelta(seconds=lost_grace_s))
        log.warning("reconciler: Redis holds fewer messages than SQL has for queued jobs; publishing again "
                    "those published over %.0f s ago", lost_grace_s)
    with db.session() as s:
        rows = jobstate.due_for_publish(s, now, unpublished_grace_s=unpublished_grace_s, stale_before=stale,
                                        limit=limit)
    if not rows:
        return 0
    if not publisher.publish_now([queue.Publication(i, m, p, k) for i, m, p, k in rows]):
        raise ConnectionError("the broker refused the publish")
    log.info("reconciler published %d job(s)", len(rows))
    return len(rows)


class Reconciler(threading.Thread):
    """Runs reconcile_once every ``interval_s`` in the background of an API process."""

    def __init__(self, db: Database, publisher: Publisher, interval_s: float, republish_after_s: float) -> None:
        super().__init__(name="gq-reconciler", daemon=True)
        self.db, self.publisher = db, publisher
        self.interval_s, self.republish_after_s = interval_s, republish_after_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                reconcile_once(self.db, self.publisher, republish_after_s=self.republish_after_s)
            except Exception as e:  # Redis or SQL still down: try again next round
                log.warning("reconciler: %s: %s", e.__class__.__name__, e)

    def stop(self) -> None:
        self._stop_event.set()
