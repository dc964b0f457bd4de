"""The console's read side on SQLite and PostgreSQL (counters, held items, recent reasons) and its session
store on real Redis. Items are written through the worker's outcome path and decided through
genqueue.review.state, as in production."""

from __future__ import annotations

import datetime as dt
import time
import uuid

from genqueue import jobstate
from genqueue.db.models import ApiKey
from genqueue.db.session import Database
from genqueue.enums import Role
from genqueue.queue import redis_client
from genqueue.review import state
from genqueue_api.auth import create_key
from genqueue_api.console import store
from genqueue_api.console.sessions import SessionStore
from genqueue_api.store import jobs as job_store


def _key(db: Database, role: Role) -> ApiKey:
    with db.session() as s:
        return create_key(s, f"k-{uuid.uuid4().hex[:6]}", role)[0]


def _outputs(db: Database, owner: ApiKey, n: int, flagged: int) -> tuple[list[str], str]:
    """``n`` outputs waiting for review, the first ``flagged`` of them flagged by the pre-screen."""
    model = f"m-{uuid.uuid4().hex[:8]}"
    ids = [str(uuid.uuid4()) for _ in range(n)]
    with db.session() as s:
        job_store.insert_jobs(s, [{"id": i, "owner_id": owner.id, "model": model, "model_version": "1", "kind": "text",
                                   "status": "running", "leased_by": "w", "priority": 5, "input": {"prompt": "x"},
                                   "metadata_": {}, "review_policy": "required", "webhook": None,
                                   "webhook_events": [], "metrics": {}, "attempts": 1} for i in ids])
        s.commit()
        flags = [{"rule": "url", "score": 0.5}]
        written = jobstate.write_outcomes(s, "w", [jobstate.Success(i, {"texts": [f"text {i}"]}, {}, [],
                                                                    flags if k < flagged else [])
                                                   for k, i in enumerate(ids)])
    assert all(written.values())
    return ids, model


def test_counters_held_items_and_recent_reasons(db: Database) -> None:
    owner, alice, bob = _key(db, Role.client), _key(db, Role.moderator), _key(db, Role.moderator)
    now = dt.datetime.now(dt.UTC)
    with db.session() as s:
        before = store.counters(s, alice.id, now)
    ids, model = _outputs(db, owner, 5, flagged=2)
    with db.session() as s:
        after = store.counters(s, alice.id, now)
    assert (after.pending - before.pending, after.flagged - before.flagged) == (5, 2)

    a = state.Actor.of(alice)
    with db.session() as s:
        mine = state.claim(s, a, 100, model=model, now=now)
        s.commit()
        assert len(mine) == 5 and set(mine[:2]) == set(ids[:2])  # flagged first
        assert store.held(s, alice.id, now) == mine
        assert store.held(s, alice.id, now + dt.timedelta(hours=1)) == []  # expired claims are not held
        state.decide(s, a, mine[0], "approve", None, now=now)
        state.decide(s, a, mine[1], "reject", "spam", now=now)
        state.decide(s, a, mine[2], "reject", "off topic", now=now)
        state.decide(s, a, mine[3], "reject", "spam", now=now)
        state.decide(s, a, mine[4], "escalate", None, now=now)
        s.commit()
        got = store.counters(s, alice.id, now)
        assert got.decided_today_me == 5
        assert got.decided_today_all - before.decided_today_all >= 5
        assert got.escalated - before.escalated == 1
        assert (got.pending, got.flagged) == (before.pending, before.flagged)
        assert store.counters(s, bob.id, now).decided_today_me == 0
        # Tomorrow, today's decisions no longer count.
        assert store.counters(s, alice.id, now + dt.timedelta(days=1)).decided_today_me == 0
        assert store.recent_reasons(s, alice.id) == ["spam", "off topic"]
        assert store.recent_reasons(s, bob.id) == []


def test_start_of_day_is_utc_midnight() -> None:
    t = dt.datetime(2026, 5, 4, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=3)))  # 22:30 UTC the day before
    assert store.start_of_day(t) == dt.datetime(2026, 5, 3, tzinfo=dt.UTC)


def test_sessions_live_in_redis_under_a_hash_slide_and_end(redis_scratch_url: str, db: Database) -> None:
    client = redis_client(redis_scratch_url)
    sessions = SessionStore(client, ttl_s=60)
    key = _key(db, Role.moderator)
    token, sess = sessions.create(key)
    assert (sess.key_id, sess.name, sess.role) == (key.id, key.name, "moderator") and sess.csrf != token
    names = [n.decode() for n in client.scan_iter(match="genqueue:console:session:*")]
    assert len(names) == 1 and token not in names[0]  # a copy of Redis does not hand out live tokens
    client.expire(names[0], 5)
    assert sessions.get(token) == sess
    assert client.ttl(names[0]) > 50  # each request pushes the end back
    assert sessions.get("not-a-token") is None and sessions.get("x" * 1000) is None
    sessions.delete(token)
    assert sessions.get(token) is None
    short = SessionStore(client, ttl_s=1)
    token, _ = short.create(key)
    time.sleep(1.2)
    assert short.get(token) is None
