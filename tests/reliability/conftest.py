"""Stacks of a test's own (API, workers, webhook sender as real processes) on SQLite or PostgreSQL, for tests
that kill, cut or flood them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from genqueue.client import Client
from genqueue.db.session import Database, upgrade
from genqueue.enums import Role
from genqueue.settings import Settings
from genqueue.stack import Stack, free_port
from genqueue_api.auth import create_key

# Quick recovery for tests: short leases and a busy reconciler (the product defaults are checked by
# tests/pipeline/test_crash.py).
FAST = {"GENQUEUE_LEASE_SECONDS": "3", "GENQUEUE_RECONCILE_INTERVAL_S": "0.5", "GENQUEUE_REPUBLISH_AFTER_S": "3"}


@dataclass
class Fault:
    stack: Stack
    db: Database
    secret: str  # a client key
    database: str  # "sqlite" | "postgres"
    db_url: str
    extra: dict[str, Any] = field(default_factory=dict)

    def client(self, timeout: float = 60) -> Client:
        return Client(self.stack.base_url, self.secret, timeout=timeout)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fault_stack(redis_url_factory, fresh_postgres, models_dir: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                database: str) -> Iterator[Any]:
    """``start(extra_env, workers=1, redis_url=None)``: a stack on a fresh database of the test's
    ``database`` kind, with a Redis database of its own unless ``redis_url`` names one."""
    started: list[tuple[Fault, bool]] = []

    def start(extra_env: dict[str, str] | None = None, workers: int = 1, redis_url: str | None = None) -> Fault:
        url = f"sqlite:///{tmp_path / 'gq.db'}" if database == "sqlite" else fresh_postgres()
        own_redis = redis_url is None
        settings = Settings(data_dir=tmp_path, database_url=url, redis_url=redis_url or redis_url_factory(),
                            models_dir=models_dir)
        upgrade(settings.sqlalchemy_url)
        db = Database(settings.sqlalchemy_url)
        with db.session() as s:
            _, secret = create_key(s, "c", Role.client)
        env = {**FAST, "GENQUEUE_WORKER_METRICS_PORT": "0", **(extra_env or {})}
        stack = Stack(settings, workers=workers, port=free_port(), extra_env=env).start(timeout=180)
        f = Fault(stack, db, secret, database, settings.sqlalchemy_url)
        started.append((f, own_redis))
        return f

    yield start
    for f, own_redis in started:
        f.stack.stop()
        f.db.dispose()
        if own_redis:
            redis_url_factory.release(str(f.stack.settings.redis_url))
