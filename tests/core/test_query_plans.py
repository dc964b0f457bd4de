"""The worker's id-list statements find their rows through the primary key on SQLite, not through the index
on ``status``: the latter reads every row of that status (all finished jobs, or the whole backlog) to
pick out the few ids of a message, so each statement's cost grows with the table."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from genqueue import jobstate
from genqueue.db.models import utcnow
from genqueue.db.session import Database, upgrade
from genqueue.enums import Role
from genqueue_api.auth import create_key
from genqueue_api.store import jobs as store


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'plans.db'}"
    upgrade(url)
    d = Database(url)
    yield d
    d.dispose()


def _queued(db: Database, n: int) -> list[str]:
    with db.session() as s:
        key, _ = create_key(s, "plans", Role.client)
        rows = [{"id": str(uuid.uuid4()), "owner_id": key.id, "model": "m", "model_version": "1", "kind": "image",
                 "status": "queued", "priority": 5, "input": {"seed": i}, "metadata_": {}, "review_policy": "auto",
                 "webhook_events": [], "metrics": {}, "attempts": 0, "created_at": utcnow()} for i in range(n)]
        store.insert_jobs(s, rows)
        s.commit()
    return [str(r["id"]) for r in rows]


def test_id_list_statements_use_the_primary_key(sqlite_db: Database) -> None:
    db = sqlite_db
    # Rows of every status the statements filter on, so that an index on status is a real alternative.
    finished = _queued(db, 300)
    with db.session() as s:
        jobstate.claim_many(s, finished, "w0", 60, 3)
    with db.session() as s:
        jobstate.write_outcomes(s, "w0", [jobstate.Success(j, {}, {}, [], []) for j in finished])
    _queued(db, 300)  # a backlog
    ids = _queued(db, 8)

    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "jobs" in statement and not statement.lstrip().upper().startswith("INSERT"):
            seen.append((statement, parameters[0] if executemany else parameters))

    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        with db.session() as s:
            claimed = jobstate.claim_many(s, ids, "w1", 60, 3, models=["m"], hold_last=True)
        assert all(isinstance(c, jobstate.Claimed) for c in claimed.values())
        with db.session() as s:
            jobstate.mark_published(s, [("m1", ids)])  # the API's publisher, after each message
            s.commit()
        with db.session() as s:
            assert jobstate.canceled_among(s, ids) == []
            jobstate.renew_leases(s, ids, "w1", 60)
        with db.session() as s:
            jobstate.write_outcomes(s, "w1", [jobstate.Success(ids[7], {}, {}, [], [])])
        # Every guarded UPDATE matched its row: nothing was read back.
        assert not any(st.startswith("SELECT jobs.id") and "finished_at" in st for st, _ in seen)
        with db.session() as s:
            # One outcome for a job this worker does not hold: the write then reads back which rows it finished.
            written = jobstate.write_outcomes(
                s, "w1", [jobstate.Success(j, {}, {}, [], []) for j in [*ids[:4], finished[0]]]
                + [jobstate.Failure(j, "engine_error", "x") for j in ids[4:6]] + [jobstate.Release(ids[6])])
        assert written.pop(finished[0]) is False and all(written.values())
        with db.session() as s:
            assert jobstate.cancel_queued(s, ids) == [ids[6]]
            s.commit()
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)

    assert any(st.startswith("UPDATE jobs SET published_at") for st, _ in seen)
    assert len(seen) >= 8 and any(st.startswith("SELECT jobs.id") and "finished_at" in st for st, _ in seen)
    raw = db.engine.raw_connection()
    try:
        for statement, params in seen:
            plan = " | ".join(str(r[3]) for r in raw.cursor().execute(f"EXPLAIN QUERY PLAN {statement}", params))
            assert "ix_jobs_status" not in plan, f"{statement!r} plans {plan!r}"
            if " IN (" in statement and "WHERE jobs.id" in statement:
                assert "sqlite_autoindex_jobs_1" in plan or "PRIMARY KEY" in plan, f"{statement!r} plans {plan!r}"
    finally:
        raw.close()
