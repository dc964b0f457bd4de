"""What the per-job SQL and publishing cost, and what batching would save (evidence for bench/FINDINGS.md).

Inserts N queued image jobs, then times, single-threaded (no lock contention, no Celery):

* ``per_job``: the worker's own path, ``claim_many`` + ``write_outcomes`` on one job at a time
  (2 transactions and ~8 statements per job);
* ``batched``: the worker's grouped path, ``service.claim_many`` + ``service.write_outcomes`` on B jobs at
  once (one claim transaction and one result transaction per B jobs; the same rows are written).

And publishing (``publish_cost``): ``genqueue.queue.publish`` as it is, Celery ``send_task`` per job, and
LPUSHing pre-built message bytes through one redis-py pipeline.

    python -m bench.sqlcost --jobs 512 --batch 64
    python -m bench.sqlcost --jobs 2048 --batch 16 --statements 12   # per statement, on a table of ~25k jobs
    GENQUEUE_DATABASE_URL=postgresql+psycopg://... python -m bench.sqlcost
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from genqueue.db.models import utcnow
from genqueue.db.session import Database, upgrade
from genqueue.enums import Role
from genqueue.settings import Settings

PNG = b"\x89PNG" + b"\x00" * 300  # about the size of a 32x32 digit


def _seed(db: Database, n: int) -> list[str]:
    from genqueue_api.auth import create_key
    from genqueue_api.store.jobs import insert_jobs

    with db.session() as s:
        key, _ = create_key(s, f"sqlcost-{uuid.uuid4().hex[:6]}", Role.client)
        rows = [{"id": str(uuid.uuid4()), "owner_id": key.id, "model": "dcgan-digits", "model_version": "1",
                 "kind": "image", "status": "queued", "priority": 5, "input": {"seed": i, "num_images": 1},
                 "metadata_": {}, "review_policy": "auto", "webhook_events": [], "metrics": {}, "attempts": 0,
                 "created_at": utcnow()} for i in range(n)]
        insert_jobs(s, rows)
        s.commit()
    return [str(r["id"]) for r in rows]


def per_job(db: Database, ids: list[str]) -> float:
    from genqueue import jobstate as service

    t0 = time.perf_counter()
    for job_id in ids:
        with db.session() as s:
            c = service.claim_many(s, [job_id], "w1", 120, 3)[job_id]
        assert isinstance(c, service.Claimed)
        with db.session() as s:
            ok = service.write_outcomes(s, "w1", [service.Success(
                job_id, {"images": []}, {"tokens": 1.0}, [(PNG, 32, 32, "png")], [])])[job_id]
        assert ok
    return time.perf_counter() - t0


def batched(db: Database, ids: list[str], batch: int) -> float:
    """The worker's grouped path: ``service.claim_many`` and ``service.write_outcomes`` on ``batch`` jobs."""
    from genqueue import jobstate as service

    t0 = time.perf_counter()
    for s0 in range(0, len(ids), batch):
        chunk = ids[s0 : s0 + batch]
        with db.session() as s:
            claimed = service.claim_many(s, chunk, "w1", 120, 3)
        assert all(isinstance(c, service.Claimed) for c in claimed.values())
        outcomes = [service.Success(j, {"images": []}, {"tokens": 1.0}, [(PNG, 32, 32, "png")],
                                    []) for j in chunk]
        with db.session() as s:
            written = service.write_outcomes(s, "w1", outcomes)
        assert all(written.values())
    return time.perf_counter() - t0


def run(url: str, jobs: int, batch: int) -> dict[str, Any]:
    upgrade(url)
    db = Database(url)
    try:
        a = per_job(db, _seed(db, jobs))
        b = batched(db, _seed(db, jobs), batch)
    finally:
        db.dispose()
    return {"jobs": jobs, "batch": batch, "database": url.split(":", 1)[0],
            "per_job_ms": round(a * 1000 / jobs, 3), "batched_ms_per_job": round(b * 1000 / jobs, 3),
            "per_job_jobs_per_s": round(jobs / a, 1), "batched_jobs_per_s": round(jobs / b, 1),
            "speedup": round(a / b, 1)}


def publish_cost(broker_url: str, settings: Settings, n: int = 1000) -> dict[str, Any]:
    """µs per message to publish ``n`` job ids: ``genqueue.queue.publish`` as it is now, Celery's
    ``send_task`` per message inside one producer batch (what publishing through Celery costs), and a raw
    redis-py pipeline LPUSHing pre-built message bytes (the floor). Everything is deleted afterwards."""
    from kombu import Exchange, Queue

    from genqueue import queue

    app = queue.make_celery(settings, broker_url)
    r = queue.redis_client(broker_url)
    name = f"bench.pubcost.{uuid.uuid4().hex[:6]}"
    q = queue.queue_name(name)
    items = [queue.Chunk(name, 5, [str(uuid.uuid4())]) for _ in range(n)]  # one job per message
    out: dict[str, Any] = {"messages": n}
    try:
        queue.publish(app, items[:10])
        t0 = time.perf_counter()
        queue.publish(app, items)
        out["genqueue_publish_us"] = round((time.perf_counter() - t0) * 1e6 / n, 1)
        target = Queue(q, Exchange(""), routing_key=q)
        with app.producer_or_acquire() as producer, producer.batch(max_size=2 * n):
            t0 = time.perf_counter()
            for it in items:
                app.send_task(queue.TASK_NAME, args=[it.job_ids], kwargs={"model": name}, queue=target, declare=[], priority=5,
                              producer=producer, ignore_result=True)
        out["celery_send_task_us"] = round((time.perf_counter() - t0) * 1e6 / n, 1)
        keys = list(r.scan_iter(match=f"{q}*"))
        sample = r.lindex(keys[0], 0)
        assert sample is not None
        t0 = time.perf_counter()
        pipe = r.pipeline(transaction=False)
        for _ in items:
            pipe.lpush(keys[0], sample)
        pipe.execute()
        out["raw_pipeline_us"] = round((time.perf_counter() - t0) * 1e6 / n, 1)
        out["message_bytes"] = len(sample)
    finally:
        for k in r.scan_iter(match=f"{q}*"):
            r.delete(k)
        app.close()
    return out


def statements(url: str, jobs: int, batch: int, rounds: int) -> list[dict[str, Any]]:
    """The grouped path ``rounds`` times on one database, which keeps every finished job (a table that grows
    as a deployment's does); the last round timed statement by statement, slowest first."""
    from sqlalchemy import event

    upgrade(url)
    db = Database(url)
    spent: dict[str, list[float]] = {}

    def before(conn: Any, *_: Any) -> None:
        conn.info["sqlcost_t0"] = time.perf_counter()

    def after(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        spent.setdefault(" ".join(statement.split())[:100], []).append(time.perf_counter() - conn.info["sqlcost_t0"])

    try:
        for r in range(rounds):
            ids = _seed(db, jobs)
            if r == rounds - 1:
                event.listen(db.engine, "before_cursor_execute", before)
                event.listen(db.engine, "after_cursor_execute", after)
            batched(db, ids, batch)
    finally:
        db.dispose()
    rows = [{"statement": k, "runs": len(v), "ms_total": round(sum(v) * 1000, 1),
             "us_each": round(sum(v) * 1e6 / len(v))} for k, v in spent.items()]
    return sorted(rows, key=lambda row: -row["ms_total"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sqlcost")
    ap.add_argument("--jobs", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--statements", type=int, default=0, metavar="ROUNDS",
                    help="instead: run the grouped path ROUNDS times on one growing database and time the last "
                         "round's statements one by one")
    args = ap.parse_args(argv)
    settings = Settings()
    with tempfile.TemporaryDirectory() as tmp:
        url = settings.sqlalchemy_url if settings.database_url else f"sqlite:///{Path(tmp) / 'sqlcost.db'}"
        if args.statements:
            for row in statements(url, args.jobs, args.batch, args.statements):
                print(f"{row['ms_total']:9.1f} ms {row['runs']:6d}x {row['us_each']:8d} us each  {row['statement']}")
        else:
            print(run(url, args.jobs, args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
