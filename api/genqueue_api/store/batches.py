"""Batch repository: batches, their lines and the counts of their jobs. No HTTP, no validation here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.orm import Session

from genqueue.db import counters
from genqueue.db.models import Batch, BatchRequest, Job, utcnow
from genqueue.enums import JobStatus


def insert_batch(session: Session, row: dict[str, Any]) -> None:
    row["seq"] = counters.reserve(session, "batch_seq", 1)
    session.execute(insert(Batch), [row])


def get_owned(session: Session, batch_id: str, owner_id: str | None) -> Batch | None:
    """``owner_id`` None means an admin: any batch."""
    b = session.get(Batch, batch_id)
    if b is None or (owner_id is not None and b.owner_id != owner_id):
        return None
    return b


def list_owned(session: Session, owner_id: str | None, before_seq: int | None, limit: int) -> list[Batch]:
    q = select(Batch)
    if owner_id is not None:
        q = q.where(Batch.owner_id == owner_id)
    if before_seq is not None:
        q = q.where(Batch.seq < before_seq)
    return list(session.execute(q.order_by(Batch.seq.desc()).limit(limit)).scalars())


def status_of(session: Session, batch_id: str) -> str | None:
    return session.execute(select(Batch.status).where(Batch.id == batch_id)).scalar_one_or_none()


def insert_requests(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(BatchRequest), list(rows))


def stored_custom_ids(session: Session, batch_id: str, custom_ids: set[str]) -> set[str]:
    if not custom_ids:
        return set()
    rows = session.execute(select(BatchRequest.custom_id).where(
        BatchRequest.batch_id == batch_id, BatchRequest.custom_id.in_(list(custom_ids)))).scalars()
    return {c for c in rows if c is not None}


def add_progress(session: Session, batch_id: str, lines: int, invalid: int) -> None:
    session.execute(update(Batch).where(Batch.id == batch_id)
                    .values(total=Batch.total + lines, invalid=Batch.invalid + invalid, read_at=utcnow()))


def add_errors(session: Session, batch_id: str, errors: list[dict[str, Any]]) -> None:
    b = session.get(Batch, batch_id)
    if b is not None and errors:
        b.errors = [*(b.errors or []), *errors]


def move(session: Session, batch_id: str, from_statuses: Sequence[str], to: str,
         times: dict[str, dt.datetime]) -> bool:
    """Guarded status change: False when the batch was no longer in one of ``from_statuses``."""
    res = session.execute(
        update(Batch).where(Batch.id == batch_id, Batch.status.in_(list(from_statuses)))
        .values(status=to, **times).execution_options(synchronize_session=False)
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]


def job_counts(session: Session, batch_id: str) -> dict[str, int]:
    """Jobs of the batch by status (one indexed GROUP BY on jobs.batch_id)."""
    rows = session.execute(select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status))
    return {str(getattr(status, "value", status)): int(n) for status, n in rows}


def job_ids_in_lines(session: Session, batch_id: str, after_line: int, lines: int) -> list[str]:
    """The jobs of lines ``after_line + 1`` to ``after_line + lines`` (refused lines have none). A window of
    line numbers, not "the next N queued jobs": that query skipped every job canceled before it, so canceling
    a batch chunk by chunk read the batch quadratically."""
    ids = session.execute(
        select(BatchRequest.job_id).where(BatchRequest.batch_id == batch_id, BatchRequest.line > after_line,
                                          BatchRequest.line <= after_line + lines, BatchRequest.job_id.is_not(None))
    ).scalars()
    return [i for i in ids if i is not None]


def last_line(session: Session, batch_id: str) -> int:
    """The highest line stored so far (0 for none): the primary key's last entry for the batch."""
    return int(session.execute(select(func.max(BatchRequest.line)).where(BatchRequest.batch_id == batch_id))
               .scalar_one() or 0)


def refused_lines(session: Session, batch_id: str, limit: int) -> list[BatchRequest]:
    """The first lines refused by validation (a valid line has a job)."""
    return list(session.execute(
        select(BatchRequest).where(BatchRequest.batch_id == batch_id, BatchRequest.job_id.is_(None))
        .order_by(BatchRequest.line).limit(limit)
    ).scalars())


Which = Literal["all", "output", "error"]


def lines_page(session: Session, batch_id: str, after_line: int, lines: int,
               which: Which) -> list[tuple[BatchRequest, Job | None]]:
    """Lines ``after_line + 1`` to ``after_line + lines`` in input order, each with its job: all of them, those
    whose job succeeded (the output file) or those that were refused or whose job failed or was canceled (the
    error file). A window of line numbers rather than ORDER BY ... LIMIT: PostgreSQL, before its statistics
    know a freshly stored batch, planned the LIMIT form as a join of every later line then a sort, which read
    a 50,000-line batch's results five times slower than SQLite did."""
    q = (select(BatchRequest, Job).outerjoin(Job, Job.id == BatchRequest.job_id)
         .where(BatchRequest.batch_id == batch_id, BatchRequest.line > after_line,
                BatchRequest.line <= after_line + lines))
    if which == "output":
        q = q.where(Job.status == JobStatus.succeeded.value)
    elif which == "error":
        q = q.where(or_(BatchRequest.job_id.is_(None),
                        Job.status.in_([JobStatus.failed.value, JobStatus.canceled.value])))
    rows = session.execute(q.order_by(BatchRequest.line)).all()
    return [(r[0], r[1]) for r in rows]
