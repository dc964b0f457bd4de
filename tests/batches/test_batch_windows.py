"""A large batch's results and its cancel read it a window of lines at a time, whatever PostgreSQL's
statistics say. Right after a batch is stored the planner has none for it; the earlier "next N lines"
(ORDER BY ... LIMIT) form was then planned as a join of every later line followed by a sort, so reading a
50,000-line batch's results took five times as long as on SQLite."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event

from genqueue.db.models import utcnow
from genqueue.db.session import Database, upgrade
from genqueue.enums import Role
from genqueue_api.auth import create_key
from genqueue_api.store import batches as store
from genqueue_api.store import jobs as jobs_store

LINES = 12_000  # below about 8,000 lines PostgreSQL planned even the old form well
WINDOW = 500


@pytest.fixture
def big_batch(fresh_postgres: Callable[[], str]) -> Iterator[tuple[Database, str]]:
    """A batch of LINES lines (every seventh refused, so without a job) in a database never analyzed."""
    url = fresh_postgres()
    upgrade(url)
    db = Database(url)
    now = utcnow()
    with db.session() as s:
        key, _ = create_key(s, "windows", Role.client)
        batch_id = f"batch_{uuid.uuid4().hex[:24]}"
        store.insert_batch(s, {"id": batch_id, "owner_id": key.id, "endpoint": "/v1/jobs", "status": "in_progress",
                               "output_file_id": "file-o", "error_file_id": "file-e", "errors": [],
                               "expires_at": now + dt.timedelta(days=1)})
        jobs, requests = [], []
        for line in range(1, LINES + 1):
            job_id = None if line % 7 == 0 else str(uuid.uuid4())
            if job_id:
                jobs.append({"id": job_id, "owner_id": key.id, "model": "m", "model_version": "1", "kind": "image",
                             "status": "queued", "priority": 5, "input": {"seed": line}, "metadata_": {},
                             "review_policy": "auto", "webhook_events": [], "metrics": {}, "attempts": 0,
                             "created_at": now, "batch_id": batch_id})
            requests.append({"batch_id": batch_id, "line": line, "custom_id": f"r{line}", "job_id": job_id,
                             "error": None if job_id else {"code": "validation_error"}})
        jobs_store.insert_jobs(s, jobs)
        store.insert_requests(s, requests)
        s.commit()
    yield db, batch_id
    db.dispose()


def _most_rows_of_any_step(db: Database, run: Callable[[Any], Any]) -> tuple[Any, int]:
    """Runs ``run(session)`` and EXPLAIN ANALYZEs each SELECT it sent: what it returned, and the most rows
    any step of those plans produced (rows × loops)."""
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        with db.session() as s:
            out = run(s)
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)
    assert sent
    most = 0
    with db.engine.connect() as conn:
        for statement, parameters in sent:
            plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters).scalar_one()
            plan = json.loads(plan) if isinstance(plan, str) else plan
            stack = [plan[0]["Plan"]]
            while stack:
                node = stack.pop()
                most = max(most, int(node["Actual Rows"]) * int(node["Actual Loops"]))
                stack.extend(node.get("Plans", []))
    return out, most


def test_results_pages_and_cancel_read_their_window_of_lines_only(big_batch: tuple[Database, str]) -> None:
    db, batch_id = big_batch
    window = range(1001, 1001 + WINDOW)
    for which, expected in (("all", list(window)), ("error", [n for n in window if n % 7 == 0])):
        page, most = _most_rows_of_any_step(db, lambda s, w=which: store.lines_page(s, batch_id, 1000, WINDOW, w))  # type: ignore[misc]
        assert [req.line for req, _ in page] == expected  # "error": the refused lines (no job has failed)
        assert most <= WINDOW, f"{which}: a step of the plan produced {most} rows for a window of {WINDOW} lines"
    ids, most = _most_rows_of_any_step(db, lambda s: store.job_ids_in_lines(s, batch_id, 2000, WINDOW))
    assert len(ids) == len([n for n in range(2001, 2001 + WINDOW) if n % 7]) == len(set(ids))
    assert most <= WINDOW
    last, _ = _most_rows_of_any_step(db, lambda s: store.last_line(s, batch_id))
    assert last == LINES
