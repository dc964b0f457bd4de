"""The workers' heartbeats in Redis: who is alive, and which models each serves.

Each worker writes ``genqueue:worker:<id>`` every few seconds with a short TTL; a key that is gone means a
worker that stopped or died. The API reads them to list served models and to size the chunks it publishes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import redis

log = logging.getLogger(__name__)

WORKER_KEY_PREFIX = "genqueue:worker:"
HEARTBEAT_TTL_S = 30


def live_workers(client: redis.Redis) -> list[dict[str, Any]]:
    """Every live worker's last heartbeat; raises on Redis errors."""
    keys = list(client.scan_iter(match=WORKER_KEY_PREFIX + "*", count=500))
    values = client.mget(keys) if keys else []
    return [json.loads(v) for v in values if v]


class WorkerCounts:
    """Live workers per model name, read at most every ``ttl_s`` seconds (a publish must not scan Redis)."""

    def __init__(self, client: redis.Redis, ttl_s: float = 2.0) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._counts: dict[str, int] = {}
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self, model: str) -> int:
        with self._lock:
            if time.monotonic() - self._read_at > self._ttl_s:
                self._read_at = time.monotonic()
                try:
                    counts: dict[str, int] = {}
                    for w in live_workers(self._client):
                        for m in set(w.get("models", [])):
                            counts[m] = counts.get(m, 0) + 1
                    self._counts = counts
                except Exception as e:  # Redis down: the publish fails anyway; size as if one worker
                    log.debug("cannot read worker heartbeats: %s", e)
            return max(1, self._counts.get(model.partition("@")[0], 1))
