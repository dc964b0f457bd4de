"""Empty Celery tasks through one worker with Celery's default settings: the transport's own ceiling.

Run as ``celery -A bench.noop_worker worker -Q bench.noop`` (prefork, one process per core, as installed).
``noop`` does nothing; ``stamp`` appends the time it ran to a Redis list, and brackets a measured run.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from genqueue.queue import redis_client

QUEUE = "bench.noop"
STAMPS = "bench:noop:stamps"


def noop() -> None:
    """Nothing: what is measured is Celery's delivery, dispatch and ack."""


def stamp() -> None:
    redis_client(os.environ["BENCH_NAIVE_BROKER"]).rpush(STAMPS, repr(time.time()))


def make_app(broker_url: str) -> Celery:
    app = Celery("noop", broker=broker_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                    broker_connection_retry_on_startup=True, task_default_queue=QUEUE)
    app.task(name="bench.noop.noop")(noop)
    app.task(name="bench.noop.stamp")(stamp)
    return app


app = make_app(os.environ.get("BENCH_NAIVE_BROKER", "redis://127.0.0.1:6379/0"))
