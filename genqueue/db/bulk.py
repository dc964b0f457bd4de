"""Multi-row INSERTs through SQLAlchemy Core.

``session.execute(insert(Model), rows)`` takes the ORM's bulk path, whose per-row bookkeeping cost more CPU
than the statement itself on the hot paths (every submitted job, every finished job's images, review row and
audit event). These rows need none of it: no identity map, no relationships, no events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, inspect
from sqlalchemy.orm import Session

_KEYS: dict[str, dict[str, str]] = {}
_INSERTS: dict[type[Any], Any] = {}  # one statement per table: its cache key is then computed once


def _column_keys(model: type[Any]) -> dict[str, str]:
    # Rows are keyed by attribute name (Job.metadata_); the table by column key ("metadata").
    keys = _KEYS.get(model.__name__)
    if keys is None:
        keys = _KEYS[model.__name__] = {attr.key: attr.columns[0].key for attr in inspect(model).column_attrs}
    return keys


def insert_rows(session: Session, model: type[Any], rows: Sequence[dict[str, Any]]) -> None:
    """INSERT ``rows`` (keyed by ``model``'s attribute names) into its table, in the session's transaction.
    Core takes its column list from the first row, so rows are grouped by the keys they carry."""
    if not rows:
        return
    keys = _column_keys(model)
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(frozenset(row), []).append({keys.get(k, k): v for k, v in row.items()})
    stmt = _INSERTS.get(model)
    if stmt is None:
        stmt = _INSERTS[model] = insert(model.__table__)
    conn = session.connection()
    for group in groups.values():
        conn.execute(stmt, group)
