"""Rows first, then messages: a consumer that looks the rows up the instant a message reaches Redis always
finds them committed, for single submits (coalesced by the publisher) and bulk submits alike, on SQLite
and on PostgreSQL."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import threading
import time

import httpx
import pytest
from faults import short_jobs
from sqlalchemy import select

from genqueue import queue
from genqueue.db.models import Job
from genqueue.db.session import Database

pytestmark = pytest.mark.timeout(120)


def test_a_message_is_never_visible_before_its_rows(fault_stack, database: str) -> None:  # type: ignore[no-untyped-def]
    # No worker: this test is the only consumer. No republishing either: every message is the API's own.
    f = fault_stack({"GENQUEUE_REPUBLISH_AFTER_S": "600", "GENQUEUE_RECONCILE_INTERVAL_S": "0"}, workers=0)
    keys = queue.bucket_keys(queue.queue_name("tiny-lm"))
    r = queue.redis_client(f.stack.broker_url)
    seen: list[str] = []
    missing: list[str] = []
    stop = threading.Event()

    def consume() -> None:
        db = Database(f.db_url)  # a connection of its own, like a worker's
        try:
            while not stop.is_set():
                got = r.brpop(keys, timeout=1)
                if got is None:
                    continue
                args, _, _ = json.loads(base64.b64decode(json.loads(got[1])["body"]))
                ids = list(args[0])
                with db.session() as s:
                    found = set(s.execute(select(Job.id).where(Job.id.in_(ids), Job.status == "queued")).scalars())
                seen.extend(ids)
                missing.extend(i for i in ids if i not in found)
        finally:
            db.dispose()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    auth = {"Authorization": f"Bearer {f.secret}"}
    ids: list[str] = []
    try:
        with httpx.Client(base_url=f.stack.base_url, headers=auth, timeout=30) as http:
            def single(i: int) -> str:
                return str(http.post("/v1/jobs", json={"model": "tiny-lm", "input": {"prompt": f"o{i}"}}).json()["id"])

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                ids += list(pool.map(single, range(120)))
                bulks = pool.map(lambda n: http.post("/v1/jobs/bulk", json={"jobs": short_jobs(25, f"b{n}")}).json(),
                                 range(4))
                ids += [j["id"] for b in bulks for j in b["data"]]
        deadline = time.monotonic() + 30
        while set(ids) - set(seen) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        consumer.join(5)
    assert set(ids) <= set(seen), f"{len(set(ids) - set(seen))} job(s) never published"
    assert not missing, f"{len(missing)} message id(s) arrived before their row was committed: {missing[:3]}"
    print(f"ordering: {len(ids)} jobs in {len(set(seen))} distinct ids seen, none before its row")
