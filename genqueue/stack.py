"""Runs a whole genqueue stack on one machine: Redis (embedded unless configured), API and workers.

`genqueue serve`, `make demo`, the end-to-end tests and the benchmarks all start it the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from genqueue import embedded, queue
from genqueue.db.session import upgrade
from genqueue.settings import Settings

log = logging.getLogger(__name__)


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never the same twice in this process: two ports asked for in a row
    (the API's and a worker's metrics) must not collide before either is bound."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


class Stack:
    def __init__(self, settings: Settings, workers: int = 1, port: int | None = None,
                 worker_args: list[str] | None = None, log_dir: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.workers = workers
        self.port = port or settings.api_port
        self.worker_args = worker_args or []
        self.extra_env = extra_env or {}  # e.g. GENQUEUE_LEASE_SECONDS for the child processes
        self.log_dir = log_dir or settings.data_dir / "logs"
        self.broker_url = ""
        self.procs: list[subprocess.Popen[bytes]] = []
        self._owns_embedded = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "GENQUEUE_REDIS_URL": self.broker_url,
            "GENQUEUE_DATABASE_URL": self.settings.sqlalchemy_url,
            "GENQUEUE_MODELS_DIR": str(self.settings.models_dir.resolve()),
            "GENQUEUE_DATA_DIR": str(self.settings.data_dir.resolve()),
            "GENQUEUE_API_PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def _spawn(self, name: str, args: list[str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child process
        p = subprocess.Popen([sys.executable, "-m", "genqueue.cli", *args], env=self.env(), stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)

    def start(self, timeout: float = 120.0) -> Stack:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.redis_url:
            self.broker_url = self.settings.redis_url
        else:
            self.broker_url = embedded.start(self.settings.data_dir)
            self._owns_embedded = True
        upgrade(self.settings.sqlalchemy_url)
        self._spawn("api", ["api", "--port", str(self.port)])
        for i in range(self.workers):
            self._spawn(f"worker-{i}", ["worker", *self.worker_args])
        # Webhooks go out from a process of their own, so that slow receivers never hold a GPU worker's threads.
        self._spawn("webhooks", ["webhooks"])
        try:
            self.wait_ready(timeout)
        except Exception:
            self.stop()
            raise
        return self

    def worker_heartbeats(self) -> list[dict[str, object]]:
        r = queue.redis_client(self.broker_url)
        keys = list(r.scan_iter(match="genqueue:worker:*"))
        return [json.loads(v) for v in (r.mget(keys) if keys else []) if v]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        api_ok = False
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a genqueue process exited early with code {p.returncode}; "
                                       f"see the logs in {self.log_dir}")
            if not api_ok:
                with contextlib.suppress(httpx.HTTPError):
                    api_ok = httpx.get(self.base_url + "/readyz", timeout=1).status_code == 200
            mine = {str(p.pid) for p in self.procs}
            # A worker counts once its Celery consumer runs, not merely once its engines are loaded.
            live = [h for h in self.worker_heartbeats() if str(h.get("pid")) in mine and h.get("consuming")]
            if api_ok and len(live) >= self.workers:
                return
            time.sleep(0.2)
        raise TimeoutError(f"the genqueue stack was not ready after {timeout:.0f}s; see {self.log_dir}")

    def stop(self, timeout: float = 30.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()
        if self._owns_embedded:
            embedded.stop_all()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
