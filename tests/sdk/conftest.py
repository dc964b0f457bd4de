from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from genqueue.db.session import Database, upgrade
from genqueue.enums import Role
from genqueue.settings import Settings
from genqueue.stack import free_port
from genqueue_api.app import create_app
from genqueue_api.auth import create_key


@dataclass
class Api:
    """The real API (uvicorn on a port) on real Redis and SQL, with no worker: jobs stay queued."""

    url: str
    db: Database
    settings: Settings
    keys: dict[str, str]  # role name -> secret
    key_ids: dict[str, str]

    def headers(self, who: str = "client") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}


@pytest.fixture
def api_server(database_url: str, fresh_postgres: Callable[[], str], redis_scratch_url: str, models_dir: Path,
               tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Starts the API on a database of this test's own (SQLite, or PostgreSQL for the postgres half), so
    that what a test counts or sweeps is only what it made."""
    servers: list[tuple[uvicorn.Server, threading.Thread, Database]] = []

    def start(**settings_kw: Any) -> Api:
        url = f"sqlite:///{tmp_path / f'gq{len(servers)}.db'}" if database_url.startswith("sqlite") else fresh_postgres()
        settings = Settings(data_dir=tmp_path, database_url=url, redis_url=redis_scratch_url,
                            models_dir=models_dir, **settings_kw)
        upgrade(settings.sqlalchemy_url)
        db = Database(settings.sqlalchemy_url)
        keys, ids = {}, {}
        with db.session() as s:
            for name, role in (("client", Role.client), ("other", Role.client), ("admin", Role.admin)):
                key, keys[name] = create_key(s, name, role)
                ids[name] = key.id
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.05)
        assert httpx.get(f"{url}/healthz").status_code == 200
        servers.append((server, thread, db))
        return Api(url, db, settings, keys, ids)

    yield start
    for server, thread, db in servers:
        server.should_exit = True
        thread.join(timeout=15)
        db.dispose()
