"""Planner hints that SQLAlchemy does not spell: keep SQLite from choosing the wrong index.

SQLite plans without statistics (genqueue never runs ANALYZE), and for ``id IN (…) AND status = 'running'``
it prefers the index on ``status`` to the primary key: it then reads every row of that status, all the
finished jobs of the table's life for ``status IN ('succeeded', 'failed')``, or the whole backlog for
``status = 'queued'``, to pick out the few ids it was given. On a table of 25,000 jobs that made the
worker's outcome statement cost 7.5 ms instead of 0.05 ms, and it grows with the table.
``unindexed(column)`` renders ``+column`` on SQLite, the documented way to disqualify a term from index use,
so the primary key is the only candidate left; other databases get the column as it is (PostgreSQL plans
from statistics and picks the primary key for a short id list by itself).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement


class unindexed(FunctionElement[Any]):  # noqa: N801 - used like a SQL function
    """``column`` in a term that must not choose the query's index (see the module's docstring)."""

    inherit_cache = True
    name = "unindexed"

    def __init__(self, column: ColumnElement[Any] | QueryableAttribute[Any]) -> None:
        super().__init__(column)
        self.type = column.type


@compiles(unindexed)
def _plain(element: unindexed, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(unindexed, "sqlite")
def _sqlite(element: unindexed, compiler: Any, **kw: Any) -> str:
    return "+" + str(compiler.process(element.clauses, **kw))
