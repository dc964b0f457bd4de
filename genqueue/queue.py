"""The Celery app shared by the API (which publishes) and the worker (which consumes).

A message carries only the job id (DESIGN.md invariant 1): the worker re-reads the row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from celery import Celery
from kombu import Exchange, Queue

from genqueue import embedded
from genqueue.settings import Settings

log = logging.getLogger(__name__)

TASK_NAME = "genqueue.run_job"
QUEUE_PREFIX = "gen."
# Redis has no native priorities: kombu keeps one list per bucket and drains bucket 0 first.
PRIORITY_STEPS = [0, 3, 6, 9]
_ANON = Exchange("")


def queue_name(model: str) -> str:
    """One queue per model name (all versions of a model share it)."""
    return QUEUE_PREFIX + model.partition("@")[0]


def resolve_broker_url(settings: Settings) -> str:
    return settings.redis_url or embedded.start(settings.data_dir)


def make_celery(settings: Settings, broker_url: str | None = None) -> Celery:
    url = broker_url or resolve_broker_url(settings)
    app = Celery("genqueue", broker=url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in SQL, never in the broker
        result_backend=None,
        # Ack only after the SQL write, and give the message back if the worker process dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # With the threads pool, a worker holds concurrency × multiplier messages: that caps what one
        # engine batch can see, so concurrency (not the multiplier) sets the batch horizon.
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "priority_steps": PRIORITY_STEPS,
            "sep": ":",
            "queue_order_strategy": "priority",
        },
        broker_connection_retry_on_startup=True,
        task_default_priority=5,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


@dataclass(frozen=True)
class Publication:
    job_id: str
    model: str
    priority: int


def publish(app: Celery, items: Sequence[Publication]) -> None:
    """Publish job ids; many at once go out in one Redis pipeline, not one round trip each.

    Raises on broker errors: the caller keeps the committed rows as ``queued`` without a publish marker,
    and the reconciler publishes them later (DESIGN.md invariant 2).
    """
    if not items:
        return
    with app.producer_or_acquire() as producer, producer.batch(max_size=max(len(items) * 2, 16)):
        for it in items:
            q = queue_name(it.model)
            # The anonymous exchange routes straight to the list named by the routing key, which
            # avoids a binding-table lookup (one more round trip) per message.
            app.send_task(
                TASK_NAME,
                args=[it.job_id],
                queue=Queue(q, _ANON, routing_key=q),
                declare=[],
                priority=it.priority,
                producer=producer,
                ignore_result=True,
            )


def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(embedded.redis_py_url(url), socket_timeout=5, socket_connect_timeout=2)
