"""`genqueue status`: what the queue holds and who serves it, read from Redis (queues, worker heartbeats)
and SQL (jobs by status, the oldest queued job, outputs waiting for review)."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import func, select

from genqueue import queue
from genqueue.db.models import Job, Review, utcnow
from genqueue.db.session import Database
from genqueue.enums import JobStatus, ReviewStatus

WORKER_KEY_PREFIX = "genqueue:worker:"  # where each worker's heartbeat lives (set with a TTL by the worker)


def workers(redis: Any) -> list[dict[str, Any]]:
    """The live workers' heartbeats; a worker whose key expired is gone."""
    keys = sorted(redis.scan_iter(match=WORKER_KEY_PREFIX + "*"))
    beats = [json.loads(v) for v in (redis.mget(keys) if keys else []) if v]
    now = time.time()
    return [{"id": b.get("id"), "models": b.get("models", []), "providers": b.get("providers", {}),
             "inflight": b.get("inflight", 0), "seen_s_ago": round(max(0.0, now - float(b.get("at", now))), 1)}
            for b in beats]


def queue_depths(redis: Any, models: list[str]) -> dict[str, int]:
    """Messages waiting per model queue, every priority bucket together."""
    names = sorted({queue.queue_name(m) for m in models})
    pipe = redis.pipeline(transaction=False)
    for q in names:
        for key in queue.bucket_keys(q):
            pipe.llen(key)
    counts = iter(pipe.execute())
    return {q: sum(int(next(counts)) for _ in queue.PRIORITY_STEPS) for q in names}


def store_counts(db: Database) -> dict[str, Any]:
    with db.session() as s:
        by_status = {str(k): int(v) for k, v in s.execute(select(Job.status, func.count()).group_by(Job.status))}
        oldest = s.execute(select(Job.id, Job.created_at).where(Job.status == JobStatus.queued.value)
                           .order_by(Job.created_at).limit(1)).first()
        pending = s.execute(select(func.count()).select_from(Review)
                            .where(Review.status == ReviewStatus.pending.value)).scalar_one()
        queued_models = [str(m) for m in s.execute(
            select(Job.model).where(Job.status.in_([JobStatus.queued.value, JobStatus.running.value])).distinct()
        ).scalars()]
    return {
        "jobs": {st.value: by_status.get(st.value, 0) for st in JobStatus},
        "oldest_queued": None if oldest is None else {
            "id": oldest.id, "age_s": round((utcnow() - oldest.created_at).total_seconds(), 1)},
        "reviews_pending": int(pending),
        "active_models": queued_models,
    }


def snapshot(db: Database, redis: Any, known_models: list[str] | None = None) -> dict[str, Any]:
    live = workers(redis)
    store = store_counts(db)
    models = set(known_models or []) | set(store.pop("active_models"))
    for w in live:
        models.update(w["models"])
    return {"queues": queue_depths(redis, sorted(models)), "workers": live, **store}


def render(snap: dict[str, Any]) -> str:
    lines = [f"workers alive: {len(snap['workers'])}"]
    for w in snap["workers"]:
        providers = ", ".join(f"{ref} on {p}" for ref, p in sorted(w["providers"].items())) or "-"
        lines.append(f"  {w['id']}  models: {', '.join(w['models']) or '-'}  providers: {providers}  "
                     f"in flight: {w['inflight']}  seen {w['seen_s_ago']}s ago")
    lines.append("queues (messages waiting):")
    lines += [f"  {q}  {n}" for q, n in snap["queues"].items()] or ["  (none)"]
    lines.append("jobs: " + "  ".join(f"{k}={v}" for k, v in snap["jobs"].items()))
    old = snap["oldest_queued"]
    lines.append("oldest queued job: " + ("none" if old is None else f"{old['id']}, {old['age_s']}s old"))
    lines.append(f"reviews pending: {snap['reviews_pending']}")
    return "\n".join(lines)
