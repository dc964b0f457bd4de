"""`genqueue beat` runs the reconciler for a deployment whose APIs have theirs off."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import update

from genqueue import queue
from genqueue.client import Client
from genqueue.db.models import Job


def test_beat_publishes_a_job_whose_message_was_lost(lone_stack: Callable[..., Any]) -> None:
    lone = lone_stack(workers=0, extra_env={"GENQUEUE_RECONCILE_INTERVAL_S": "0"})
    with Client(lone.stack.base_url, lone.secret) as c:
        job_id = c.submit("tiny-lm", {"prompt": "lost", "max_new_tokens": 4})["id"]
    r = queue.redis_client(lone.stack.broker_url)
    keys = queue.bucket_keys(queue.queue_name("tiny-lm"))
    # A single submit is published by the API's coalescing window after its response, and its row is marked
    # published only after the message is in Redis: wait for both, or the API's marker could land after the
    # loss simulated below and hide it from the reconciler's unpublished scan.
    def marked() -> bool:
        with lone.db.session() as s:
            return s.get(Job, job_id).published_at is not None  # type: ignore[union-attr]

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (sum(r.llen(k) for k in keys) == 1 and marked()):
        time.sleep(0.02)
    assert sum(r.llen(k) for k in keys) == 1
    assert marked()
    # The message is lost (as with a Redis flush) and the row says it was never published.
    r.delete(*keys)
    with lone.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(published_at=None))
        s.commit()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENQUEUE_")}
    env.update(lone.stack.env())
    env.update({"GENQUEUE_RECONCILE_INTERVAL_S": "0.5", "GENQUEUE_LOG_FORMAT": "json"})
    beat = subprocess.Popen([sys.executable, "-m", "genqueue.cli", "beat"], env=env, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(r.llen(k) for k in keys) == 0:
            time.sleep(0.1)
        assert sum(r.llen(k) for k in keys) == 1, "beat did not publish the lost job"
        assert marked()
    finally:
        beat.send_signal(signal.SIGTERM)
        _, err = beat.communicate(timeout=30)
    assert beat.returncode == 0, err
    events = [json.loads(line) for line in err.splitlines() if job_id in line]
    assert [(e["service"], e["event"]) for e in events] == [("beat", "republished")]
