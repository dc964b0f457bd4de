"""`genqueue beat`: the periodic duties of a deployment, run by one process instead of inside every API.

Each duty runs on its own interval in one loop; a failed round is logged and tried again next time (Redis
or SQL may be down for a while). Running the reconciler here lets API replicas turn theirs off
(``GENQUEUE_RECONCILE_INTERVAL_S=0`` on the API), so a fleet of APIs does not scan the jobs table N times.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from genqueue import queue, retention, workers
from genqueue.db.session import Database
from genqueue.publisher import Publisher
from genqueue.reconcile import DeadWorkers, reconcile_once
from genqueue.settings import Settings

log = logging.getLogger(__name__)


# The longest one retention round holds beat's loop; a larger backlog continues a second later.
RETENTION_ROUND_S = 5.0


@dataclass
class Duty:
    name: str
    interval_s: float
    run: Callable[[], object]  # returns True when it stopped early with more to do
    next_at: float = 0.0


def duties(settings: Settings, db: Database) -> list[Duty]:
    """What beat runs: the reconciler, and retention (genqueue.retention) when GENQUEUE_RETENTION_DAYS is set."""
    publisher = Publisher(settings, db, queue.make_celery(settings, queue.resolve_broker_url(settings)))
    dead = DeadWorkers(grace_s=workers.HEARTBEAT_EVERY_S + 1)
    out: list[Duty] = []
    if settings.reconcile_interval_s > 0:
        out.append(Duty("reconcile", settings.reconcile_interval_s,
                        lambda: reconcile_once(db, publisher, republish_after_s=settings.republish_after_s,
                                               dead=dead)))
    if settings.retention_days > 0:
        out.append(Duty("retention", settings.retention_interval_s,
                        lambda: retention.expire(db, dt.timedelta(days=settings.retention_days),
                                                 batch_size=settings.retention_batch_size,
                                                 pause_s=settings.retention_pause_ms / 1000,
                                                 budget_s=RETENTION_ROUND_S).more))
    return out


def run(settings: Settings, stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()
    db = Database.from_settings(settings)
    todo = duties(settings, db)
    if not todo:
        raise SystemExit("genqueue: error: GENQUEUE_RECONCILE_INTERVAL_S and GENQUEUE_RETENTION_DAYS are 0: "
                         "beat has nothing to run")
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    log.info("beat running %s", ", ".join(f"{d.name} every {d.interval_s:g}s" for d in todo))
    while not stop.is_set():
        now = time.monotonic()
        for d in todo:
            if now >= d.next_at:
                d.next_at = now + d.interval_s
                try:
                    if d.run() is True:  # more to do: the duty stopped early so that the others run too
                        d.next_at = time.monotonic() + 1.0
                except Exception as e:
                    log.warning("%s: %s: %s", d.name, e.__class__.__name__, e)
        stop.wait(max(0.05, min(d.next_at for d in todo) - time.monotonic()))
    db.dispose()
    log.info("beat stopped")
    return 0
