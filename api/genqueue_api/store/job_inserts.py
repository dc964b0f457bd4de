"""Single submits' INSERTs, committed in groups.

Each ``POST /v1/jobs`` used to open its own transaction: a session, a connection from the pool, the job-order
counter, the INSERT and a COMMIT, which on SQLite also queued every request behind the one write lock. Here
the request threads hand their row to a `Grouper`, and its thread inserts everything that queued up while the
previous group was committing, in one transaction (group commit, as PostgreSQL does for its WAL). Nothing
lingers for company: a lone submit is committed at once, and a request still answers only once its own row
is committed. A row that the database refuses (an Idempotency-Key that a concurrent request stored first, a
value it cannot hold) sends its group through again one row per transaction, so that only that row fails;
other errors (the database unreachable) are retried by the Grouper and then reach every request of the
group.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from genqueue.db.session import Database
from genqueue.grouping import Grouper
from genqueue_api.store.jobs import insert_jobs

MAX_GROUP = 256  # rows in one transaction


class JobInserter:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._grouper: Grouper[dict[str, Any], DBAPIError | None] = Grouper(
            "gq-insert", self._insert, max_batch=MAX_GROUP)

    def insert(self, row: dict[str, Any]) -> None:
        """Insert one job row and return once it is committed; raises IntegrityError (or DataError) for a
        row the database refuses."""
        refused = self.submit(row).result()
        if refused is not None:
            raise refused

    def submit(self, row: dict[str, Any]) -> Future[DBAPIError | None]:
        """Queue one job row; the future resolves once it is committed, to None, or to the error of a row the
        database refused (for callers that wait on an event loop rather than a thread)."""
        return self._grouper.submit(row)

    def close(self) -> None:
        self._grouper.close()

    def _insert(self, rows: Sequence[dict[str, Any]]) -> list[DBAPIError | None]:
        refused = self._commit(rows)
        if refused is None:
            return [None] * len(rows)
        if len(rows) == 1:
            return [refused]
        return [self._commit([row]) for row in rows]

    def _commit(self, rows: Sequence[dict[str, Any]]) -> DBAPIError | None:
        with self._db.session() as session:
            try:
                insert_jobs(session, rows)
                session.commit()
            except (IntegrityError, DataError) as e:  # this group's rows, not the database: no retry
                session.rollback()
                return e
        return None
