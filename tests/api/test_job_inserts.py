"""Single submits' rows are committed in groups (api/genqueue_api/store/job_inserts.py): every row of a group
is stored, each with its own order number, and a row the database refuses fails alone (SQLite and
PostgreSQL)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from genqueue.db.models import Job
from genqueue.db.session import Database
from genqueue.enums import Role
from genqueue_api.auth import create_key
from genqueue_api.store.job_inserts import JobInserter


def _row(owner: str, idem: str | None = None) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "owner_id": owner, "model": "m", "model_version": "1", "kind": "text",
            "status": "queued", "priority": 5, "input": {"prompt": "x"}, "metadata_": {"k": 1}, "review_policy": "auto",
            "webhook_events": [], "metrics": {}, "attempts": 0, "idempotency_key": idem}


def test_concurrent_rows_are_committed_in_groups_and_a_refused_row_fails_alone(db: Database) -> None:
    with db.session() as s:
        key, _ = create_key(s, "t", Role.client)
    owner = key.id
    inserter = JobInserter(db)
    try:
        inserter.insert(_row(owner, "taken"))
        rows = [_row(owner, "taken" if i == 7 else None) for i in range(60)]
        errors: dict[int, BaseException] = {}
        start = threading.Barrier(len(rows))

        def submit(i: int) -> None:
            start.wait()
            try:
                inserter.insert(rows[i])
            except BaseException as e:  # noqa: BLE001 - recorded for the assertion below
                errors[i] = e

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(rows))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        inserter.close()
    with db.session() as s:
        found = s.execute(select(Job.id, Job.created_seq, Job.metadata_).where(Job.owner_id == owner)).all()
        # The session's other tests share this database: queued rows that were never published would be
        # theirs to reconcile.
        s.execute(delete(Job).where(Job.owner_id == owner))
        s.commit()
    assert list(errors) == [7] and isinstance(errors[7], IntegrityError)
    stored = {r.id: r.created_seq for r in found}
    good = {r["id"] for i, r in enumerate(rows) if i != 7}
    assert good <= set(stored) and rows[7]["id"] not in stored and len(stored) == len(good) + 1
    assert len(set(stored.values())) == len(stored)  # an order number each
    assert all(r.metadata_ == {"k": 1} for r in found)  # the attribute-named column (metadata_) reached its column
    # 60 threads released together cannot all have been committed one by one by a free grouper
    assert inserter._grouper.batches < inserter._grouper.items


def test_a_closed_inserter_refuses_rows(db: Database) -> None:
    inserter = JobInserter(db)
    inserter.close()
    with pytest.raises(RuntimeError, match="closed"):
        inserter.insert(_row("nobody"))
