"""Monotonic counters that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from genqueue.db.models import Counter

_T: Any = Counter.__table__
# Built once with bound values: building it cost more CPU than running it, once per outcome write.
_RESERVE = (update(_T).where(_T.c.name == bindparam("b_name"))
            .values(value=_T.c.value + bindparam("b_n", type_=BigInteger())).returning(_T.c.value))


def reserve(session: Session, name: str, n: int = 1) -> int:
    """Reserve ``n`` consecutive values and return the first. Runs inside the caller's transaction, so
    on PostgreSQL the counter row stays locked until commit and values are handed out in commit order."""
    for _ in range(2):
        # Core statements on the table: the ORM's bulk-update path (session synchronisation, evaluation of
        # the WHERE clause in Python) cost more CPU than the UPDATE itself, once per submitted job.
        row = session.connection().execute(_RESERVE, {"b_name": name, "b_n": n}).first()
        if row is not None:
            return int(row[0]) - n + 1
        try:
            with session.begin_nested():
                session.execute(insert(_T).values(name=name, value=0))
        except IntegrityError:
            pass  # another transaction created it first
    value = session.execute(select(_T.c.value).where(_T.c.name == name)).scalar_one()
    raise RuntimeError(f"counter {name} could not be reserved (at {value})")
