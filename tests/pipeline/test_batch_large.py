"""A 50,000-line JSONL batch against a real API process: it is read and stored chunk by chunk as it arrives
(jobs are committed before the upload has ended), another client's submit goes through meanwhile, the API's
memory does not grow with the file, and cancel reaches every queued job."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from genqueue.db.models import Job
from genqueue.enums import Role
from genqueue_api.auth import create_key

LINES = 50_000
FIRST = 5_000  # lines sent before the upload pauses


def _line(i: int) -> bytes:
    return json.dumps({"custom_id": f"r{i}", "model": "dcgan-digits",
                       "input": {"num_images": 1, "seed": i, "class_label": i % 10},
                       "metadata": {"ref": f"{i:08d}" * 32}}).encode() + b"\n"


def _rss_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for row in f:
            if row.startswith(field + ":"):
                return int(row.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _queued(db: Any) -> int:
    with db.session() as s:
        return int(s.execute(select(func.count()).select_from(Job).where(Job.status == "queued")).scalar_one())


@pytest.mark.slow
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_fifty_thousand_lines_stream_in_chunks_without_blocking_others(lone_stack: Any, database: str) -> None:
    lone = lone_stack(workers=0, database=database)  # no worker: every job stays queued, for the cancel
    api_pid = lone.stack.procs[0].pid
    with lone.db.session() as s:
        _, other_secret = create_key(s, "other", Role.client)
    base, auth = lone.stack.base_url, {"Authorization": f"Bearer {lone.secret}"}
    size = sum(len(_line(i)) for i in range(LINES))
    # A small batch first: the first one pays one-off costs (imports, statement caches, allocator arenas)
    # that say nothing about how memory grows with a file.
    warm = httpx.post(base + "/v1/batches", content=b"".join(_line(i) for i in range(2000)), timeout=120,
                      headers={**auth, "content-type": "application/jsonl"})
    assert warm.status_code == 200
    httpx.post(f"{base}/v1/batches/{warm.json()['id']}/cancel", headers=auth, timeout=60).raise_for_status()
    with open(f"/proc/{api_pid}/clear_refs", "w") as f:
        f.write("5")  # restarts the peak (VmHWM) from the current resident size
    rss_before = _rss_kib(api_pid, "VmRSS")
    seen: dict[str, Any] = {}

    def body() -> Iterator[bytes]:
        for start in range(0, FIRST, 500):
            yield b"".join(_line(i) for i in range(start, start + 500))
        # The upload pauses here, 45,000 lines still unsent: jobs must already be in SQL, and another
        # client's submit must not wait for this batch.
        deadline = time.monotonic() + 60
        while (n := _queued(lone.db)) < 1000 and time.monotonic() < deadline:
            time.sleep(0.1)
        seen["jobs_while_uploading"] = n
        t0 = time.monotonic()
        r = httpx.post(base + "/v1/jobs", headers={"Authorization": f"Bearer {other_secret}"}, timeout=30,
                       json={"model": "dcgan-digits", "input": {"num_images": 1, "seed": 1}})
        seen["other_submit"] = (r.status_code, time.monotonic() - t0)
        for start in range(FIRST, LINES, 500):
            yield b"".join(_line(i) for i in range(start, min(start + 500, LINES)))

    t0 = time.monotonic()
    r = httpx.post(base + "/v1/batches", content=body(), timeout=600,
                   headers={**auth, "content-type": "application/jsonl"})
    elapsed = time.monotonic() - t0
    assert r.status_code == 200, r.text
    b = r.json()
    peak_growth_kib = _rss_kib(api_pid, "VmHWM") - rss_before
    print(f"\n{database}: {LINES} lines ({size / 1e6:.1f} MB) in {elapsed:.1f} s; jobs stored while the upload "
          f"paused: {seen['jobs_while_uploading']}; other submit {seen['other_submit']}; API peak RSS growth "
          f"{peak_growth_kib / 1024:.1f} MiB")
    assert seen["jobs_while_uploading"] >= 1000, "no chunk was committed before the upload ended"
    status, took = seen["other_submit"]
    assert status == 201 and took < 10
    assert b["status"] == "in_progress" and b["errors"] is None
    assert b["request_counts"] == {"total": LINES, "completed": 0, "failed": 0}
    # Holding the upload, or every parsed line, would grow the API by several times the file's size; read a
    # chunk at a time it grows by a fraction of it.
    assert peak_growth_kib * 1024 < size, f"the API grew by {peak_growth_kib} KiB for a {size}-byte upload"

    with httpx.stream("GET", f"{base}/v1/batches/{b['id']}/results", headers=auth, timeout=120) as res:
        ids = [json.loads(x)["custom_id"] for x in res.iter_lines() if x]
    assert ids == [f"r{i}" for i in range(LINES)]

    c = httpx.post(f"{base}/v1/batches/{b['id']}/cancel", headers=auth, timeout=300).json()
    assert c["status"] == "cancelled" and c["request_counts"] == {"total": LINES, "completed": 0, "failed": LINES}
    assert _queued(lone.db) == 1  # the other client's job alone


def test_a_concurrent_upload_and_submits_interleave(lone_stack: Any) -> None:
    """While a batch is being read, single submits from another thread answer quickly, every time."""
    lone = lone_stack(workers=0)
    base, auth = lone.stack.base_url, {"Authorization": f"Bearer {lone.secret}"}
    stop = threading.Event()
    latencies: list[float] = []

    def submitter() -> None:
        with httpx.Client(base_url=base, headers=auth, timeout=30) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                r = c.post("/v1/jobs", json={"model": "dcgan-digits", "input": {"num_images": 1}})
                assert r.status_code == 201
                latencies.append(time.monotonic() - t0)

    t = threading.Thread(target=submitter)
    t.start()
    try:
        r = httpx.post(base + "/v1/batches", content=b"".join(_line(i) for i in range(10_000)), timeout=300,
                       headers={**auth, "content-type": "application/jsonl"})
    finally:
        stop.set()
        t.join()
    assert r.status_code == 200 and r.json()["request_counts"]["total"] == 10_000
    assert len(latencies) >= 5 and max(latencies) < 5, latencies
