"""A genqueue stack for the benchmarks (genqueue.stack.Stack, started the same way as the tests and the demo)
plus the SQL read-backs every end-to-end scenario uses: job rows, completion waits, latency percentiles."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil
from sqlalchemy import func, select

from genqueue.client import Client
from genqueue.db.models import Job
from genqueue.db.session import Database, upgrade
from genqueue.enums import Role
from genqueue.settings import Settings
from genqueue.stack import Stack, free_port

TERMINAL = ("succeeded", "failed", "canceled")
CHUNK = 500  # ids per IN (...) list


@dataclass
class BenchStack:
    settings: Settings
    stack: Stack
    db: Database
    client: Client
    api_key: str

    @property
    def broker_url(self) -> str:
        return self.stack.broker_url

    def pids(self) -> dict[str, int]:
        """API and worker process ids (the worker's from its heartbeat, as the stack sees it)."""
        out = {"api": self.stack.procs[0].pid}
        mine = {p.pid for p in self.stack.procs}
        for i, hb in enumerate(h for h in self.stack.worker_heartbeats() if int(str(h.get("pid"))) in mine):
            out[f"worker{i or ''}"] = int(str(hb["pid"]))
        return out


@contextlib.contextmanager
def running(settings: Settings, workers: int, timeout: float) -> Iterator[BenchStack]:
    upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    from genqueue_api.auth import create_key

    with db.session() as s:
        _, secret = create_key(s, f"bench-{time.time_ns()}", Role.client)
    stack = Stack(settings, workers=workers, port=free_port())
    stack.start(timeout=timeout)
    client = Client(stack.base_url, secret, timeout=120)
    try:
        yield BenchStack(settings, stack, db, client, secret)
    finally:
        client.close()
        stack.stop()
        db.dispose()


def submit_bulk(client: Client, model: str, inputs: Sequence[dict[str, Any]], chunk: int = 1000) -> list[str]:
    """POST /v1/jobs/bulk in chunks of at most 1000; raises on any per-item error. Only the ids are kept,
    so the answers are minimal (``Prefer: return=minimal``), as ``genqueue bulk`` asks for them."""
    ids: list[str] = []
    for s in range(0, len(inputs), chunk):
        res = client.submit_bulk([{"model": model, "input": inp} for inp in inputs[s : s + chunk]], minimal=True)
        bad = [r for r in res if "id" not in r]
        if bad:
            raise RuntimeError(f"bulk submit refused {len(bad)} job(s): {bad[0]}")
        ids += [r["id"] for r in res]
    return ids


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for s in range(0, len(ids), CHUNK):
        yield ids[s : s + CHUNK]


def wait_done(db: Database, ids: Sequence[str], timeout: float, poll: float = 0.25,
              on_tick: Callable[[int], None] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with db.session() as s:
            done = sum(
                int(s.execute(select(func.count()).select_from(Job)
                              .where(Job.id.in_(list(c)), Job.status.in_(TERMINAL))).scalar_one())
                for c in _chunks(ids)
            )
        if on_tick:
            on_tick(done)
        if done >= len(ids):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids) - done} of {len(ids)} jobs unfinished after {timeout:.0f}s")
        time.sleep(poll)


def _ts(d: dt.datetime | None) -> float | None:
    return d.timestamp() if d is not None else None


def job_rows(db: Database, ids: Sequence[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with db.session() as s:
        for c in _chunks(ids):
            q = select(Job.id, Job.status, Job.error_code, Job.created_at, Job.started_at, Job.finished_at, Job.metrics)
            for r in s.execute(q.where(Job.id.in_(list(c)))):
                rows.append({"id": r.id, "status": r.status, "error_code": r.error_code, "created": _ts(r.created_at),
                             "started": _ts(r.started_at), "finished": _ts(r.finished_at), "metrics": r.metrics or {}})
    return rows


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1),
            "p99": round(float(np.percentile(a, 99)), 1), "mean": round(float(a.mean()), 1),
            "max": round(float(a.max()), 1)}


def summarize(rows: list[dict[str, Any]], t0: float, unit_key: str = "tokens") -> dict[str, Any]:
    """Throughput from the first submit (bench clock ``t0``) to the last finish, and latencies in ms."""
    ok = [r for r in rows if r["status"] == "succeeded"]
    end = max((r["finished"] for r in ok), default=time.time())
    wall = max(1e-9, end - t0)
    units = float(sum(r["metrics"].get(unit_key, 0.0) for r in ok))
    queue = [(r["started"] - r["created"]) * 1000 for r in ok if r["started"]]
    total = [(r["finished"] - r["created"]) * 1000 for r in ok]
    return {
        "jobs": len(rows), "succeeded": len(ok), "failed": len(rows) - len(ok),
        "errors": sorted({r["error_code"] for r in rows if r["error_code"]}),
        "wall_s": round(wall, 3), "units": units, "units_per_s": round(units / wall, 1),
        "jobs_per_s": round(len(ok) / wall, 2),
        "queue_ms": percentiles(queue), "total_ms": percentiles(total),
        "mean_batch_size": round(float(np.mean([r["metrics"].get("batch_size", 0) for r in ok])), 2) if ok else 0.0,
    }


class CpuMeter:
    """CPU seconds used by each process between start() and stop(): where the time goes, per job."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.procs["bench"] = psutil.Process()
        self._t0: dict[str, float] = {}
        self._wall = 0.0

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        t = p.cpu_times()
        return float(t.user + t.system)

    def start(self) -> CpuMeter:
        self._t0 = {n: self._cpu(p) for n, p in self.procs.items()}
        self._wall = time.perf_counter()
        return self

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._wall
        out = {f"{n}_cpu_s": round(self._cpu(p) - self._t0[n], 2) for n, p in self.procs.items()}
        out["wall_s"] = round(wall, 2)
        return out
