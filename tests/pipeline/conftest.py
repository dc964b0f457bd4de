from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from webhook_receiver import WEBHOOK_SECRET

from genqueue.client import Client
from genqueue.db.session import Database, upgrade
from genqueue.enums import Role
from genqueue.settings import Settings
from genqueue.stack import Stack, free_port
from genqueue_api.auth import create_key

# Webhooks to the tests' own receivers on 127.0.0.1, retried quickly.
WEBHOOK_ENV = {"GENQUEUE_WEBHOOK_SECRET": WEBHOOK_SECRET, "GENQUEUE_WEBHOOK_ALLOW_PRIVATE": "127.0.0.1",
               "GENQUEUE_WEBHOOK_RETRY_BASE_S": "0.2", "GENQUEUE_WEBHOOK_RELAY_INTERVAL_S": "0.2"}


@dataclass
class Running:
    stack: Stack
    settings: Settings
    db: Database
    client: Client  # a client-role key
    other: Client  # a second client, to check that jobs stay private
    admin: Client
    keys: dict[str, str]


@pytest.fixture(scope="session")
def running(database_url: str, redis_url_factory, models_dir: Path,  # type: ignore[no-untyped-def]
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A real stack: uvicorn API and a Celery worker subprocess on real Redis and real SQL."""
    data = tmp_path_factory.mktemp("data")
    settings = Settings(data_dir=data, database_url=database_url, redis_url=redis_url_factory(),
                        models_dir=models_dir)
    upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    keys = {}
    with db.session() as s:
        for name, role in (("client", Role.client), ("other", Role.client), ("admin", Role.admin),
                           ("moderator", Role.moderator)):
            keys[name] = create_key(s, name, role)[1]
    stack = Stack(settings, port=free_port(),
                  extra_env={"GENQUEUE_WORKER_METRICS_PORT": str(free_port()), **WEBHOOK_ENV}).start(timeout=180)
    clients = {n: Client(stack.base_url, k, timeout=90) for n, k in keys.items() if n != "moderator"}
    try:
        yield Running(stack, settings, db, clients["client"], clients["other"], clients["admin"], keys)
    finally:
        for c in clients.values():
            c.close()
        stack.stop()
        db.dispose()


@dataclass
class Lone:
    """A stack of one's own, for tests that stop or kill its processes."""

    stack: Stack
    db: Database
    secret: str  # a client key


@pytest.fixture
def lone_stack(redis_url_factory, fresh_postgres, models_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Starts a stack with its own Redis database, its own SQL database (SQLite, or with
    ``database="postgres"`` a fresh PostgreSQL database) and ``workers`` workers; ``extra_env`` reaches the
    child processes."""
    started: list[Lone] = []

    def start(extra_env: dict[str, str] | None = None, workers: int = 1, database: str = "sqlite") -> Lone:
        url = f"sqlite:///{tmp_path / 'gq.db'}" if database == "sqlite" else fresh_postgres()
        settings = Settings(data_dir=tmp_path, database_url=url, redis_url=redis_url_factory(), models_dir=models_dir)
        upgrade(settings.sqlalchemy_url)
        db = Database(settings.sqlalchemy_url)
        with db.session() as s:
            _, secret = create_key(s, "c", Role.client)
        lone = Lone(Stack(settings, workers=workers, port=free_port(), extra_env=extra_env).start(timeout=180), db, secret)
        started.append(lone)
        return lone

    yield start
    for lone in started:
        lone.stack.stop()
        lone.db.dispose()
        redis_url_factory.release(str(lone.stack.settings.redis_url))
