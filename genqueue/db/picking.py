"""Pick rows to update without two transactions picking the same ones: ``SELECT … FOR UPDATE SKIP LOCKED``
on PostgreSQL, evaluated exactly once.

Written as ``UPDATE … WHERE id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)``, PostgreSQL may run the
sub-select again for later rows of the UPDATE; by then the rows it locked first are updated by this very
statement and skipped, so it picks further ones and the UPDATE changes more than ``n`` rows. A MATERIALIZED
CTE is evaluated once. SQLite has one writer at a time and no row locks: there the same statement is just
atomic (FOR UPDATE is left out).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, select


def picked(column: Any, query: Select[Any], name: str = "picked") -> ColumnElement[bool]:
    """``column IN`` the rows ``query`` (a one-column SELECT) picks under SKIP LOCKED, evaluated once."""
    cte = query.with_for_update(skip_locked=True).cte(name).prefix_with("MATERIALIZED", dialect="postgresql")
    return column.in_(select(cte.c[0]))  # type: ignore[no-any-return]
