"""The Celery app shared by the API (which publishes) and the worker (which consumes).

A message carries only job ids: a chunk of jobs of one model and one priority, committed to SQL before the
message is published. The worker re-reads the rows. One message per job would cap a worker at the broker's
per-message cost (a BRPOP, and a MULTI into kombu's unacked index and out again at the ack: ~0.7 ms of
worker CPU each), far below what a batched engine computes.
"""

from __future__ import annotations

import base64
import bisect
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis
from celery import Celery

from genqueue import embedded
from genqueue.settings import Settings

log = logging.getLogger(__name__)

TASK_NAME = "genqueue.run_jobs"  # run_jobs(job_ids, model=...)
QUEUE_PREFIX = "gen."
# Redis has no native priorities: kombu keeps one list per bucket and drains bucket 0 first.
PRIORITY_STEPS = [0, 3, 6, 9]


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
    kind: str  # "text" | "image": which batch size bounds its chunk


@dataclass(frozen=True)
class Chunk:
    """One broker message: job ids of one model and one priority."""

    model: str
    priority: int
    job_ids: list[str]
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))


def plan_chunks(items: Sequence[Publication], max_chunk: Callable[[str], int],
                workers: Callable[[str], int]) -> list[Chunk]:
    # max_chunk takes the kind ("text" | "image"), workers the model name.
    """Group ids by (model, priority), in order, and cut each group into chunks.

    The spreading rule: a group of n jobs for a model that W live workers serve is cut into chunks of at
    most ceil(n / W) jobs (and at most ``max_chunk(model)``, by default the model's batch size), so a shallow
    queue still gives every idle worker a share instead of handing the whole group to the first worker that
    fetches. With W unknown (no heartbeat yet) it counts one worker.
    """
    groups: dict[tuple[str, int, str], list[str]] = {}
    for it in items:
        groups.setdefault((it.model, it.priority, it.kind), []).append(it.job_id)
    chunks: list[Chunk] = []
    for (model, priority, kind), ids in groups.items():
        size = max(1, min(max_chunk(kind), -(-len(ids) // max(1, workers(model)))))
        chunks.extend(Chunk(model, priority, ids[i:i + size]) for i in range(0, len(ids), size))
    return chunks


def _bucket_key(queue: str, priority: int) -> str:
    """The Redis list kombu reads for this priority (kombu's ``_q_for_pri`` with sep ":")."""
    bucket = PRIORITY_STEPS[bisect.bisect(PRIORITY_STEPS, max(0, min(9, priority))) - 1]
    return f"{queue}:{bucket}" if bucket else queue


def bucket_keys(queue: str) -> list[str]:
    """Every Redis list that holds messages of ``queue``, highest priority first."""
    return [_bucket_key(queue, p) for p in PRIORITY_STEPS]


_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
_REPLY_TO = str(uuid.uuid4())


def encode_message(chunk: Chunk, queue: str) -> bytes:
    """A Celery task message (protocol 2, JSON body) for ``run_jobs(job_ids, model=...)``, as kombu's Redis
    transport stores it. Building it directly costs a few microseconds, against ~90 µs through ``send_task``."""
    task_id, priority = chunk.message_id, chunk.priority
    args, kwargs = [chunk.job_ids], {"model": chunk.model}
    body = json.dumps([args, kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    message = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": TASK_NAME, "id": task_id, "shadow": None, "eta": None, "expires": None,
            "group": None, "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id,
            "parent_id": None, "argsrepr": f"[<{len(chunk.job_ids)} job ids>]", "kwargsrepr": repr(kwargs),
            "origin": _ORIGIN,
            "ignore_result": True, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
        },
        "properties": {
            "correlation_id": task_id, "reply_to": _REPLY_TO, "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue}, "priority": priority,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(message).encode()


def publish(app: Celery, chunks: Sequence[Chunk]) -> None:
    """Publish chunks: all of them go out in one Redis pipeline (one round trip), not one each.

    Raises on broker errors: the caller keeps the committed rows as ``queued`` without a publish marker,
    and the reconciler publishes them later.
    """
    if not chunks:
        return
    pipe = shared_redis(str(app.conf.broker_url)).pipeline(transaction=False)
    for c in chunks:
        q = queue_name(c.model)
        pipe.lpush(_bucket_key(q, c.priority), encode_message(c, q))
    pipe.execute()


def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(embedded.redis_py_url(url), socket_timeout=5, socket_connect_timeout=2)


_clients: dict[str, redis.Redis] = {}


def shared_redis(url: str) -> redis.Redis:
    """One client (and connection pool) per URL per process, for request paths: building a client per
    request would open a connection per request."""
    client = _clients.get(url)
    if client is None:
        client = _clients.setdefault(url, redis_client(url))
    return client
