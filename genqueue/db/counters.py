"""Monotonic counters that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from genqueue.db.models import Counter


def reserve(session: Session, name: str, n: int = 1) -> int:
    """Reserve ``n`` consecutive values and return the first. Runs inside the caller's transaction, so
    on PostgreSQL the counter row stays locked until commit and values are handed out in commit order."""
    for _ in range(2):
        row = session.execute(
            update(Counter).where(Counter.name == name).values(value=Counter.value + n).returning(Counter.value)
        ).first()
        if row is not None:
            return int(row[0]) - n + 1
        try:
            with session.begin_nested():
                session.execute(insert(Counter).values(name=name, value=0))
        except IntegrityError:
            pass  # another transaction created it first
    value = session.execute(select(Counter.value).where(Counter.name == name)).scalar_one()
    raise RuntimeError(f"counter {name} could not be reserved (at {value})")
