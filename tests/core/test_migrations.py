"""The Alembic migrations build exactly the schema the SQLAlchemy models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from genqueue.db.models import Base
from genqueue.db.session import Database, ensure_migrated, upgrade


def test_migrations_match_models(database_url: str) -> None:
    upgrade(database_url)
    db = Database(database_url)
    try:
        ensure_migrated(db)
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
    finally:
        db.dispose()
