"""``load`` scenario: Poisson arrivals of text jobs at fractions of the capacity the system scenario measured.

Each arrival is one POST /v1/jobs (what an interactive client sends), fired on schedule from a small thread
pool so that a slow response never delays the next arrival. Latencies come from the job rows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bench.stackrun import BenchStack, job_rows, summarize, wait_done


def _level(bs: BenchStack, inputs: Sequence[dict[str, Any]], rate: float, duration: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=int(rate * duration * 2) + 16)
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals < duration]
    ids: list[str] = []
    lag: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def fire(inp: dict[str, Any]) -> None:
        try:
            job = bs.client.submit("tiny-lm", inp)
            with lock:
                ids.append(job["id"])
        except Exception as e:  # recorded, not fatal: an overloaded API is a result too
            with lock:
                errors.append(repr(e)[:200])

    t0 = time.time()
    start = time.perf_counter()
    with ThreadPoolExecutor(16, thread_name_prefix="load") as pool:
        for k, at in enumerate(arrivals):
            delay = start + float(at) - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            lag.append(max(0.0, -delay) * 1000)
            pool.submit(fire, inputs[k % len(inputs)])
    wait_done(bs.db, ids, timeout=max(120.0, 4 * duration))
    out = summarize(job_rows(bs.db, ids), t0)
    out.update({"offered_rate_jobs_per_s": round(rate, 2), "arrivals": len(arrivals), "submit_errors": errors[:5],
                "submit_error_count": len(errors), "schedule_lag_ms_p99": round(float(np.percentile(lag, 99)), 1) if lag else 0.0})
    return out


def run(bs: BenchStack, inputs: Sequence[dict[str, Any]], capacity_jobs_per_s: float, fractions: Sequence[float],
        duration: float, log: Callable[[str], None] = print) -> dict[str, Any]:
    levels: dict[str, Any] = {}
    for i, f in enumerate(fractions):
        r = _level(bs, inputs, f * capacity_jobs_per_s, duration, seed=100 + i)
        r["fraction"] = f
        levels[f"{int(round(f * 100))}"] = r
        log(f"load {f:.0%} ({r['offered_rate_jobs_per_s']} jobs/s offered, {r['jobs_per_s']} served): total "
            f"p50/p95/p99 {r['total_ms'].get('p50')}/{r['total_ms'].get('p95')}/{r['total_ms'].get('p99')} ms, "
            f"queue p50 {r['queue_ms'].get('p50')} ms")
    return {"capacity_jobs_per_s": capacity_jobs_per_s, "duration_s": duration, "levels": levels}


def metrics(res: dict[str, Any]) -> dict[str, float]:
    m: dict[str, float] = {"load.capacity_jobs_per_s": res["capacity_jobs_per_s"]}
    for pct, r in res["levels"].items():
        for lat in ("queue_ms", "total_ms"):
            for p in ("p50", "p95", "p99"):
                if p in r[lat]:
                    m[f"load.{pct}.{lat.removesuffix('_ms')}_{p}_ms"] = r[lat][p]
        m[f"load.{pct}.served_jobs_per_s"] = r["jobs_per_s"]
    return m
