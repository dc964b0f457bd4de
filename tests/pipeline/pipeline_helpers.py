"""Helpers shared by the pipeline tests that stop or kill a worker mid-job."""

from __future__ import annotations

import time

from genqueue.client import Client


def submit_long_jobs_until_running(c: Client, count: int, n: int) -> list[str]:
    """Bulk-submits ``count`` tiny-lm jobs of ``n`` candidates that each take nearly the whole context, then
    waits (up to 60 s) until one of them runs; returns their ids. Long jobs keep a worker busy long enough
    for a test to stop or kill it mid-job."""
    limit = {m["name"]: m for m in c.models()}["tiny-lm"]["versions"][0]["limits"]["max_new_tokens"]
    items = [{"model": "tiny-lm", "input": {"prompt": f"job {i}", "max_new_tokens": limit - 8, "seed": i, "n": n}}
             for i in range(count)]
    ids = [j["id"] for j in c.submit_bulk(items)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(c.get(i)["status"] == "running" for i in ids):
        time.sleep(0.02)
    return ids
