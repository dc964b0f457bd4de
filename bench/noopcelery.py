"""Driver of bench/noop_worker.py: empty tasks/s through one Celery worker with default settings, on the
stack's Redis. A run sends a ``stamp`` task, ``n`` empty tasks and another ``stamp``; the rate is ``n``
over the time between the two stamps (the sender outpaces the worker, so the worker sets the pace)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil

from bench import naive, noop_worker
from genqueue.queue import redis_client


class NoopCelery:
    def __init__(self, broker_url: str, log_dir: Path) -> None:
        env = dict(os.environ)
        env.update({"BENCH_NAIVE_BROKER": broker_url, "PYTHONUNBUFFERED": "1"})
        self.redis = redis_client(broker_url)
        self.app = noop_worker.make_app(broker_url)
        self.worker = naive.start_worker("bench.noop_worker", noop_worker.QUEUE, env, log_dir / "noop-worker.log")

    def measure(self, n: int, timeout: float = 300) -> dict[str, Any]:
        self.redis.delete(noop_worker.STAMPS)
        noop, stamp = self.app.tasks["bench.noop.noop"], self.app.tasks["bench.noop.stamp"]
        with self.app.producer_or_acquire() as producer:
            stamp.apply_async(producer=producer)
            for _ in range(n):
                noop.apply_async(producer=producer)
            stamp.apply_async(producer=producer)
        deadline = time.monotonic() + timeout
        while self.redis.llen(noop_worker.STAMPS) < 2:
            if self.worker.poll() is not None:
                raise RuntimeError(f"the no-op Celery worker exited with code {self.worker.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no-op Celery: {n} empty tasks unfinished after {timeout:.0f}s")
            time.sleep(0.05)
        first, last = sorted(float(x) for x in self.redis.lrange(noop_worker.STAMPS, 0, -1))
        return {"tasks": n, "wall_s": round(last - first, 3), "tasks_per_s": round(n / max(1e-9, last - first), 1)}

    def describe(self) -> dict[str, Any]:
        kids = psutil.Process(self.worker.pid).children(recursive=True)
        return {"pool": "prefork (Celery's default)", "concurrency": len(kids), "worker_processes": 1}

    def stop(self) -> None:
        naive.stop_worker(self.worker)
        self.app.close()
