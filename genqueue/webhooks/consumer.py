"""`genqueue webhooks`: the process that sends webhooks. A Celery worker consuming only the `webhooks`
queue (threads: an attempt mostly waits on the network), and the relay thread that feeds that queue from
the outbox. `genqueue serve` and the test stacks start one; a deployment runs one or more (the relay and
the attempt numbers make several safe)."""

from __future__ import annotations

import logging
import os
import sys

import httpx
from celery import signals

from genqueue import queue
from genqueue.db.session import Database, NotMigrated, ensure_migrated
from genqueue.settings import Settings
from genqueue.webhooks import delivery, guard
from genqueue.webhooks.relay import Relay

log = logging.getLogger(__name__)


def run(settings: Settings, concurrency: int = 8, loglevel: str = "INFO") -> None:
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    guard.parse_allow(settings.webhook_allow_private)  # a bad setting stops the start, not each attempt
    db = Database.from_settings(settings)
    try:
        ensure_migrated(db)
    except NotMigrated as e:
        raise SystemExit(f"genqueue webhooks: error: {e}") from None
    broker_url = queue.resolve_broker_url(settings)
    app = queue.make_celery(settings, broker_url)
    http = httpx.Client()
    delivery.register(app, db, settings, http)
    relay = Relay(db, app, settings)

    @signals.worker_ready.connect(weak=False)
    def _start(**_: object) -> None:
        relay.start()

    @signals.worker_shutdown.connect(weak=False)
    def _stop(**_: object) -> None:
        relay.stop()
        http.close()
        db.dispose()

    argv = ["worker", "--pool=threads", f"--concurrency={concurrency}", f"--queues={delivery.QUEUE}",
            "--without-gossip", "--without-mingle", "--without-heartbeat", f"--hostname=genqueue-webhooks-{os.getpid()}@%h",
            f"--loglevel={loglevel}"]
    log.info("webhook sender consuming %s", delivery.QUEUE)
    app.worker_main(argv)
    sys.exit(0)
