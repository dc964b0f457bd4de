"""Faults of the services around genqueue, each on SQLite and on PostgreSQL: Redis flushed and then
restarted empty under load, the database unreachable for 10 s while the worker writes, and publishing
failing at submit time."""

from __future__ import annotations

import sqlite3
import threading
import time
from urllib.parse import urlsplit

import pytest
from faults import (
    SLOW_MODEL_ENV,
    RedisServer,
    TcpProxy,
    exactly_once,
    running_now,
    short_jobs,
    spawn_worker,
    statuses,
    until,
    wait_consuming,
    wait_final,
)
from sqlalchemy import select

from genqueue import queue
from genqueue.db.models import Job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_redis_flushed_then_restarted_empty_under_load(fault_stack, database: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = RedisServer(tmp_path / "redis")
    f = fault_stack({"GENQUEUE_WORKER_CONCURRENCY": "8"}, redis_url=server.url)
    ids: list[str] = []
    try:
        with f.client() as c:
            def load(tag: str) -> None:
                ids.extend(j["id"] for j in c.submit_bulk(short_jobs(16, tag, tokens=24)))

            load("a")
            load("b")
            queue.redis_client(server.url).flushall()  # every queued message and heartbeat is gone
            load("c")
            server.kill()  # and then Redis itself, with nothing on disk
            load("d")  # accepted while Redis is down: kept in SQL for the reconciler
            time.sleep(1)
            server.start()
            load("e")
            st = wait_final(f.db, ids, 150)
            # The same worker did it all: it waited for Redis rather than dying with it.
            assert f.stack.procs[1].poll() is None, f"the worker exited with {f.stack.procs[1].returncode}"
            assert set(st.values()) == {"succeeded"}, {v: list(st.values()).count(v) for v in set(st.values())}
        exactly_once(f.db, ids)
    finally:
        f.stack.stop()
        server.kill()


def _cut_database(f, seconds: float) -> None:  # type: ignore[no-untyped-def]
    """Make the worker's database unreachable for ``seconds``."""
    if f.database == "postgres":
        f.extra["proxy"].cut()
        time.sleep(seconds)
        f.extra["proxy"].restore()
        return
    # SQLite has no server to cut off: an exclusive lock held on the file has the same effect for every writer.
    path = f.db_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    time.sleep(seconds)
    conn.execute("ROLLBACK")
    conn.close()


def test_database_unreachable_for_10_s_while_the_worker_writes(fault_stack, database: str) -> None:  # type: ignore[no-untyped-def]
    f = fault_stack(workers=0)
    env: dict[str, str] = {"GENQUEUE_WORKER_CONCURRENCY": "8", **SLOW_MODEL_ENV}
    if database == "postgres":
        # The worker reaches PostgreSQL through a proxy of this test's own; the API and the test do not.
        parts = urlsplit(f.db_url)
        proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
        f.extra["proxy"] = proxy
        env["GENQUEUE_DATABASE_URL"] = f.db_url.replace(parts.netloc, f"{parts.username}@127.0.0.1:{proxy.port}")
    wait_consuming(f.stack, [spawn_worker(f.stack, "worker-proxied", env)])
    try:
        with f.client() as c:
            limit = {m["name"]: m for m in c.models()}["tiny-lm"]["versions"][0]["limits"]["max_new_tokens"]
            ids = [j["id"] for j in c.submit_bulk(short_jobs(60, "cut", tokens=min(120, limit - 8)))]
            assert until(lambda: "succeeded" in statuses(f.db, ids).values(), 60, every=0.02)
            # Cut while the worker holds jobs: read again until some are running (between two of the engine's
            # batches none may be), so that the outage falls on work in hand.
            held: dict[str, str] = {}

            def some_running() -> bool:
                held.update(running_now(f.db, ids))
                return bool(held)

            assert until(some_running, 30, every=0.01)
            at_cut = statuses(f.db, ids)
            cutter = threading.Thread(target=_cut_database, args=(f, 10.0))
            cutter.start()
            cutter.join()
            st = wait_final(f.db, ids, 150)
            assert set(st.values()) == {"succeeded"}, {v: list(st.values()).count(v) for v in set(st.values())}
        # The outage fell in the middle of the work (jobs were seen running just before it, above), and others
        # were still to come.
        assert list(at_cut.values()).count("succeeded") < len(ids), at_cut
        exactly_once(f.db, ids)
    finally:
        f.stack.stop()
        if "proxy" in f.extra:
            f.extra["proxy"].close()


def test_publishing_fails_at_submit(fault_stack, database: str, redis_url_factory) -> None:  # type: ignore[no-untyped-def]
    url = redis_url_factory()
    parts = urlsplit(url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    # The API (and its reconciler) reach Redis through the proxy; the worker reaches it directly.
    f = fault_stack({"GENQUEUE_REDIS_URL": f"redis://127.0.0.1:{proxy.port}{parts.path}"}, workers=0, redis_url=url)
    try:
        wait_consuming(f.stack, [spawn_worker(f.stack, "worker-direct", {"GENQUEUE_REDIS_URL": url})])
        with f.client() as c:
            proxy.cut()
            ids = [c.submit("tiny-lm", it["input"])["id"] for it in short_jobs(5, "single")]
            ids += [j["id"] for j in c.submit_bulk(short_jobs(20, "bulk"))]
            time.sleep(1.5)  # past the coalescing window and a few reconciler passes, all refused
            with f.db.session() as s:
                rows = s.execute(select(Job.status, Job.published_at).where(Job.id.in_(ids))).all()
            # Accepted and kept: committed as queued, with no message anywhere yet.
            assert {r.status for r in rows} == {"queued"} and {r.published_at for r in rows} == {None}
            proxy.restore()
            st = wait_final(f.db, ids, 90)
            assert set(st.values()) == {"succeeded"}, st
        exactly_once(f.db, ids)
    finally:
        f.stack.stop()
        proxy.close()
        redis_url_factory.release(url)
