"""The transport: one broker message per chunk of job ids (one model, one priority), coalesced single submits,
and a worker that runs a message's jobs together, skips what it must not run, and spreads over workers."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from genqueue import queue
from genqueue.client import Client
from genqueue.db.models import AuditEvent, Job
from genqueue.db.session import Database, upgrade
from genqueue.enums import Role
from genqueue.publisher import Publisher
from genqueue.reconcile import reconcile_once
from genqueue.settings import Settings
from genqueue.workers import WORKER_KEY_PREFIX
from genqueue_api.app import create_app
from genqueue_api.auth import create_key

pytestmark = pytest.mark.timeout(300)


def messages(redis_url: str, model: str) -> list[dict[str, Any]]:
    """Every message waiting in ``model``'s queue: its ids, kwargs, priority and task id."""
    rc = queue.redis_client(redis_url)
    out = []
    for key in queue.bucket_keys(queue.queue_name(model)):
        for raw in rc.lrange(key, 0, -1):
            m = json.loads(raw)
            args, kwargs, _ = json.loads(base64.b64decode(m["body"]))
            out.append({"ids": args[0], "kwargs": kwargs, "priority": m["properties"]["priority"],
                        "id": m["headers"]["id"], "task": m["headers"]["task"]})
    return out


@pytest.fixture
def api_factory(database_url: str, redis_scratch_url: str, models_dir: Path,
                tmp_path: Path) -> Iterator[Any]:
    """An API with no worker behind it, on the session's database and a scratch Redis database."""
    opened: list[Any] = []

    def make(**overrides: Any) -> tuple[TestClient, dict[str, str], Database, Settings]:
        settings = Settings(data_dir=tmp_path, database_url=database_url, redis_url=redis_scratch_url,
                            models_dir=models_dir, reconcile_interval_s=0, **overrides)
        upgrade(settings.sqlalchemy_url)
        db = Database(settings.sqlalchemy_url)
        with db.session() as s:
            _, secret = create_key(s, "c", Role.client)
        client = TestClient(create_app(settings))
        client.__enter__()
        opened.append((client, db))
        return client, {"Authorization": f"Bearer {secret}"}, db, settings

    yield make
    for client, db in opened:
        client.__exit__(None, None, None)
        db.dispose()


def _cancel_all(c: TestClient, h: dict[str, str], ids: list[str]) -> None:
    """Leave no queued job behind for the reconcilers of other tests sharing the session's database."""
    for i in ids:
        c.post(f"/v1/jobs/{i}/cancel", headers=h)


def test_a_bulk_goes_out_as_one_message_per_chunk_of_one_priority(api_factory) -> None:  # type: ignore[no-untyped-def]
    c, h, db, settings = api_factory()
    items = [{"model": "tiny-lm", "input": {"prompt": f"p{i}"}, "priority": 0 if i % 2 else 7} for i in range(100)]
    r = c.post("/v1/jobs/bulk", json={"jobs": items}, headers=h)
    assert r.status_code == 200
    jobs = r.json()["data"]
    got = messages(str(settings.redis_url), "tiny-lm")
    # 50 jobs per priority, chunks of at most the text batch size (32): 32 + 18 for each.
    assert sorted(len(m["ids"]) for m in got) == [18, 18, 32, 32]
    prio = {j["id"]: j["priority"] for j in jobs}
    for m in got:
        assert {prio[i] for i in m["ids"]} == {m["priority"]}
        assert m["kwargs"] == {"model": "tiny-lm"} and m["task"] == queue.TASK_NAME
    assert sorted(i for m in got for i in m["ids"]) == sorted(prio)
    with db.session() as s:  # each row names the message that carries it, for the reconciler's count
        rows = dict(s.execute(select(Job.id, Job.message_id).where(Job.id.in_(list(prio)))).all())  # type: ignore[arg-type]
    assert {rows[i] for m in got for i in m["ids"]} == {m["id"] for m in got}
    for m in got:
        assert {rows[i] for i in m["ids"]} == {m["id"]}
    _cancel_all(c, h, list(prio))


def test_a_shallow_bulk_is_cut_so_every_live_worker_gets_a_share(api_factory) -> None:  # type: ignore[no-untyped-def]
    c, h, _, settings = api_factory()
    rc = queue.redis_client(str(settings.redis_url))
    for w in ("a", "b", "c"):  # three workers announce tiny-lm before the API sizes its chunks
        rc.set(WORKER_KEY_PREFIX + w, json.dumps({"id": w, "models": ["tiny-lm"]}), ex=30)
    items = [{"model": "tiny-lm", "input": {"prompt": f"p{i}"}} for i in range(10)]
    jobs = c.post("/v1/jobs/bulk", json={"jobs": items}, headers=h).json()["data"]
    assert sorted(len(m["ids"]) for m in messages(str(settings.redis_url), "tiny-lm")) == [2, 4, 4]
    _cancel_all(c, h, [j["id"] for j in jobs])


def test_single_submits_within_the_window_share_one_message(api_factory) -> None:  # type: ignore[no-untyped-def]
    # A wide window makes the coalescing certain on a busy machine; the default is 2 ms.
    c, h, db, settings = api_factory(publish_window_ms=300)
    ids: list[str] = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        r = c.post("/v1/jobs", json={"model": "tiny-lm", "input": {"prompt": f"p{i}"}}, headers=h)
        assert r.status_code == 201
        with lock:
            ids.append(r.json()["id"])

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(16)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    answered_in = time.monotonic() - t0
    deadline = time.monotonic() + 10
    while sum(len(m["ids"]) for m in messages(str(settings.redis_url), "tiny-lm")) < 16:
        assert time.monotonic() < deadline, "the coalesced publish never came"
        time.sleep(0.02)
    got = messages(str(settings.redis_url), "tiny-lm")
    assert sorted(i for m in got for i in m["ids"]) == sorted(ids)  # every job once
    assert len(got) < len(ids)  # and fewer messages than jobs
    # The publisher marks the rows after the messages are in Redis, in a transaction of its own.
    while True:
        with db.session() as s:
            unmarked = s.scalar(select(func.count()).select_from(Job).where(Job.id.in_(ids),
                                                                            Job.published_at.is_(None)))
        if unmarked == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert unmarked == 0
    assert answered_in < 30
    _cancel_all(c, h, ids)


def test_after_a_redis_flush_the_reconciler_publishes_the_queued_ids_again_in_chunks(api_factory) -> None:  # type: ignore[no-untyped-def]
    c, h, db, settings = api_factory()
    # Priority 2: no other test's leftover queued jobs share these chunks.
    items = [{"model": "tiny-lm", "input": {"prompt": f"p{i}"}, "priority": 2} for i in range(100)]
    ids = [j["id"] for j in c.post("/v1/jobs/bulk", json={"jobs": items}, headers=h).json()["data"]]
    rc = queue.redis_client(str(settings.redis_url))
    rc.flushdb()  # Redis restarted with nothing on disk
    publisher = Publisher(settings, db, queue.make_celery(settings, settings.redis_url))
    assert reconcile_once(db, publisher, lost_grace_s=0, republish_after_s=1e9) >= len(ids)
    mine = [m for m in messages(str(settings.redis_url), "tiny-lm") if m["priority"] == 2]
    assert sorted(len(m["ids"]) for m in mine) == [4, 32, 32, 32]
    assert sorted(i for m in mine for i in m["ids"]) == sorted(ids)
    assert reconcile_once(db, publisher, lost_grace_s=0, republish_after_s=1e9) == 0  # nothing lost now
    _cancel_all(c, h, ids)


def _wait_final(c: Client, ids: list[str], timeout: float = 120) -> dict[str, dict[str, Any]]:
    return {i: c.wait(i, timeout=timeout) for i in ids}


def _prescreen_writes(db: Database, ids: list[str]) -> dict[str, int]:
    """Outcome writes per job: each successful write adds one prescreen audit event in its transaction, and
    nothing keeps a second write from adding a second (unlike the review row, whose key is the job id)."""
    with db.session() as s:
        rows = s.execute(select(AuditEvent.job_id, func.count()).where(
            AuditEvent.job_id.in_(ids), AuditEvent.action == "prescreen").group_by(AuditEvent.job_id)).all()
    return {str(j): int(n) for j, n in rows}


def test_a_message_delivered_again_runs_only_its_unfinished_ids_and_skips_strangers(lone_stack) -> None:  # type: ignore[no-untyped-def]
    lone = lone_stack()
    stack, db = lone.stack, lone.db
    app = queue.make_celery(stack.settings, stack.settings.redis_url)
    with Client(stack.base_url, lone.secret, timeout=60) as c:
        done = [j["id"] for j in c.submit_bulk([{"model": "tiny-lm", "input": {"prompt": f"d{i}", "seed": i,
                                                                             "max_new_tokens": 8}} for i in range(3)])]
        before = _wait_final(c, done)
        # A job queued in SQL only (no message of its own), and an image job that a text queue must not run.
        image = c.submit("dcgan-digits", {"seed": 1})["id"]
        c.wait(image, timeout=60)
        with db.session() as s:
            from sqlalchemy import update

            # Make the image job look queued again: a tiny-lm message naming it must leave it alone.
            s.execute(update(Job).where(Job.id == image).values(status="queued", finished_at=None))
            s.commit()
        fresh = c.submit("tiny-lm", {"prompt": "fresh", "max_new_tokens": 8, "seed": 9})["id"]
        c.wait(fresh, timeout=60)
        with db.session() as s:
            s.execute(update(Job).where(Job.id == fresh).values(status="queued", finished_at=None, output=None))
            s.execute(AuditEvent.__table__.delete().where(AuditEvent.job_id == fresh))  # type: ignore[attr-defined]
            from genqueue.db.models import Review

            s.execute(Review.__table__.delete().where(Review.job_id == fresh))  # type: ignore[attr-defined]
            s.commit()
        # The same finished ids delivered again, with a stranger, a missing id and the image job.
        queue.publish(app, [queue.Chunk("tiny-lm", 5, [*done, "no-such-job", image, fresh])])
        final = c.wait(fresh, timeout=60)
        assert final["status"] == "succeeded" and final["attempts"] == 2
        after = {i: c.get(i) for i in done}
        for i in done:  # untouched: not run again, not written again
            assert after[i]["attempts"] == 1 and after[i]["finished_at"] == before[i]["finished_at"]
            assert after[i]["output"] == before[i]["output"]
        with db.session() as s:
            row = s.get(Job, image)
            assert row is not None and row.status == "queued" and row.attempts == 1  # skipped: other model
            s.execute(update(Job).where(Job.id == image).values(status="canceled"))
            s.commit()
        assert _prescreen_writes(db, [*done, fresh]) == {i: 1 for i in [*done, fresh]}
        text = "".join(p.read_text() for p in stack.log_dir.glob("worker*.log"))
        assert "job no-such-job skipped: missing" in text and f"job {image} skipped: other_model" in text


def test_two_workers_share_a_bulk_and_no_job_runs_twice(lone_stack) -> None:  # type: ignore[no-untyped-def]
    # On PostgreSQL: on SQLite both workers' commits queue for one write lock, handed out by SQLite's
    # sleep-and-retry busy handler (naps of up to 100 ms), which on a loaded machine can favour one process
    # two to one; the share would then measure that lock, not the chunking rule (README: several workers
    # want PostgreSQL).
    lone = lone_stack(workers=2, database="postgres")
    stack, db = lone.stack, lone.db
    with Client(stack.base_url, lone.secret, timeout=120) as c:
        ids: list[str] = []
        for start in (0, 1000):
            items = [{"model": "dcgan-digits", "input": {"seed": start + i}} for i in range(1000)]
            ids += [j["id"] for j in c.submit_bulk(items)]
        deadline = time.monotonic() + 240
        while True:
            with db.session() as s:
                left = s.scalar(select(func.count()).select_from(Job).where(
                    Job.id.in_(ids), Job.status.in_(["queued", "running"])))
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert left == 0
    with db.session() as s:
        rows = s.execute(select(Job.status, Job.attempts, Job.leased_by).where(Job.id.in_(ids))).all()
    assert {r.status for r in rows} == {"succeeded"}
    assert {r.attempts for r in rows} == {1}  # no job was claimed twice
    per_worker: dict[str, int] = {}
    for r in rows:
        per_worker[r.leased_by] = per_worker.get(r.leased_by, 0) + 1
    assert len(per_worker) == 2 and min(per_worker.values()) >= 0.3 * len(ids), per_worker
    assert set(_prescreen_writes(db, ids).values()) == {1} and len(_prescreen_writes(db, ids)) == len(ids)


def test_a_priority_0_job_overtakes_a_backlog_of_priority_9(lone_stack) -> None:  # type: ignore[no-untyped-def]
    # Decode steps of a larger model's length (a tests-only sitecustomize adds 20 ms each): the quick test
    # model would otherwise finish a whole chunk before the urgent submit's response is even read.
    slow = {"PYTHONPATH": str(Path(__file__).parents[1] / "reliability" / "slow"),
            "GENQUEUE_TEST_DECODE_DELAY_S": "0.02"}
    lone = lone_stack(slow)
    stack, db = lone.stack, lone.db
    with Client(stack.base_url, lone.secret, timeout=120) as c:
        # Backlog jobs long enough that the worker's first chunk outlasts the urgent submit's round trip even
        # on a loaded machine; otherwise the worker may fetch a second backlog chunk before the urgent message
        # exists, and the test would measure the machine's load instead of the priority order.
        limit = {m["name"]: m for m in c.models()}["tiny-lm"]["versions"][0]["limits"]["max_new_tokens"]
        backlog = [j["id"] for j in c.submit_bulk(
            [{"model": "tiny-lm", "input": {"prompt": f"b{i}", "max_new_tokens": min(96, limit - 8), "seed": i},
              "priority": 9}
             for i in range(500)])]
        # A short urgent job: running jobs are never preempted, so what finishes before it is the batch that
        # was running when it arrived plus those that end early (end-of-text) during its own run; the fewer
        # steps it takes, the less that second term depends on how often the session's random model ends early.
        urgent = c.submit("tiny-lm", {"prompt": "urgent", "max_new_tokens": 8, "seed": 1}, priority=0)["id"]
        final = c.wait(urgent, timeout=120)
        assert final["status"] == "succeeded"
    # Backlog jobs still unfinished (finished_at NULL) did not finish first; no need to wait for them.
    with db.session() as s:
        finished = dict(s.execute(select(Job.id, Job.finished_at).where(Job.id.in_(backlog))).all())  # type: ignore[arg-type]
        at = s.get(Job, urgent).finished_at  # type: ignore[union-attr]
    before = sum(1 for t in finished.values() if t is not None and t < at)
    assert before < 0.1 * len(backlog), f"{before} of {len(backlog)} priority-9 jobs finished first"
