"""The engine loop the text and image engines share: inbox, cancels, stop/drain/join, warm-up, duplicates.

Callers submit from any thread; a submission is validated on the caller's thread (a bad job fails there
without touching the batch) and then waits in the inbox. The loop thread takes the inbox and the cancels at
each step boundary, so everything an engine's step touches is owned by that one thread, and then runs a step
whenever the engine says one is due (:meth:`EngineLoop._ready_in`). A job id delivered again while its first
copy is still here (at-least-once delivery) runs once, and both futures get its one result.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any, Generic, Protocol, TypeVar

from genqueue.registry import ModelEntry
from genqueue_worker.engine.types import ErrorCode, JobResult

log = logging.getLogger("genqueue.worker.engine")


def stop_all(engines: Iterable[Any], drain: bool = True, timeout: float = 30.0) -> None:
    """``stop`` every engine at once: each may take up to ``timeout`` to drain, and one after another they
    would take that many times as long."""
    threads = [threading.Thread(target=e.stop, args=(drain, timeout), name="engine-stop") for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class _Request(Protocol):
    @property
    def job_id(self) -> str: ...


class LoopJob(Protocol):
    """What the loop needs of an engine's job: its request's id and the future it resolves."""

    @property
    def request(self) -> _Request: ...

    @property
    def future(self) -> Future[JobResult]: ...


class LoopConfig(Protocol):
    @property
    def max_batch_size(self) -> int: ...

    @property
    def warmup(self) -> bool: ...


JobT = TypeVar("JobT", bound=LoopJob)
RequestT = TypeVar("RequestT")

SHUTDOWN_MESSAGE = "the worker stopped before the job finished"


class EngineLoop(Generic[RequestT, JobT]):
    """Base of the engines: ``start()`` warms the runner up and runs the loop on a daemon thread; ``run_all()``
    runs it in the caller's thread until every submitted job is done."""

    kind = "engine"  # thread-name prefix; the name of an engine built from a runner alone
    config: LoopConfig

    def __init__(self, config: LoopConfig, entry: ModelEntry | None, runner: Any) -> None:
        self.config = config
        self.entry = entry
        self.runner = runner
        self.info = runner.info
        self.name = entry.ref if entry is not None else self.kind
        self._cond = threading.Condition()
        self._inbox: list[JobT] = []  # submitted, not yet taken by the loop
        self._cancels: list[str] = []  # job ids to cancel at the next step boundary
        self._jobs: dict[str, JobT] = {}  # taken by the loop and not resolved yet
        self._closed = False  # stop() was called, or the loop ended: submit() refuses new work
        self._stopping = False
        self._drain = True
        self._thread: threading.Thread | None = None
        self._warm = False

    # -- what each engine provides ---------------------------------------------------------------------
    def _prepare(self, request: RequestT, future: Future[JobResult]) -> JobT | None:
        """Validate on the caller's thread; None when the job failed there (its future is resolved)."""
        raise NotImplementedError

    def _admit(self, job: JobT) -> None:
        """Hand a taken job to the batching (loop thread)."""
        raise NotImplementedError

    def _cancel(self, job_id: str) -> None:
        """End a job at a step boundary (loop thread)."""
        raise NotImplementedError

    def _ready_in(self) -> float | None:
        """Seconds until the next step is due: None with nothing to do, 0 or less for now."""
        raise NotImplementedError

    def _step(self) -> None:
        raise NotImplementedError

    def _failed(self, job: JobT, code: ErrorCode, message: str) -> JobResult:
        """The result of a job that fails with ``code`` (no side effects beyond the job's own state)."""
        raise NotImplementedError

    def _warmed(self) -> None:
        """After the runner's warm-up: anything else to set up once."""

    def _loop_ended(self) -> None:
        """The loop is leaving (loop thread): give back what the engine holds for its jobs."""

    def _stopped(self) -> None:
        """``stop()`` waited for the loop: release what the engine holds beyond the loop (pools, sessions)."""

    # -- public API (thread-safe) ----------------------------------------------------------------------
    @property
    def provider(self) -> str:
        """The execution provider that actually runs (read from the session, after any silent fallback)."""
        return str(self.runner.provider)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._warmup()
        self._thread = threading.Thread(target=self._loop, name=f"{self.kind}-engine-{self.name}", daemon=True)
        self._thread.start()

    def submit(self, request: RequestT) -> Future[JobResult]:
        return self.submit_many([request])[0]

    def submit_many(self, requests: Sequence[RequestT]) -> list[Future[JobResult]]:
        futures: list[Future[JobResult]] = []
        jobs: list[JobT] = []
        for request in requests:
            future: Future[JobResult] = Future()
            future.set_running_or_notify_cancel()
            futures.append(future)
            job = self._prepare(request, future)
            if job is not None:
                jobs.append(job)
        with self._cond:
            if self._closed:
                for job in jobs:
                    self._settle(job, self._failed(job, ErrorCode.shutdown, "the engine is stopping"))
            else:
                self._inbox.extend(jobs)
                self._cond.notify()
        return futures

    def cancel(self, job_id: str) -> None:
        with self._cond:
            self._cancels.append(job_id)
            self._cond.notify()

    def stop(self, drain: bool = True, timeout: float = 30.0) -> None:
        with self._cond:
            self._closed = self._stopping = True
            self._drain = drain
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # draining took too long: stop at the next step boundary
                with self._cond:
                    self._drain = False
                    self._cond.notify_all()
                self._thread.join(max(1.0, timeout / 10))
        self._stopped()
        with self._cond:
            leftovers, self._inbox = self._inbox, []
            # A job still here gets no result unless it gets one now: one never admitted, or one a step
            # that outlived the waits above did not finish.
            for job in [*leftovers, *list(self._jobs.values())]:
                self._settle(job, self._failed(job, ErrorCode.shutdown, SHUTDOWN_MESSAGE))

    def run_all(self, requests: Iterable[RequestT]) -> list[JobResult]:
        """Synchronous in-process API (benchmarks, tests): every request to completion in this thread."""
        if self._thread is not None:
            raise RuntimeError("run_all() needs an engine whose loop thread is not started")
        self._warmup()
        futures = [self.submit(r) for r in requests]
        self._loop(until_idle=True)
        return [f.result() for f in futures]

    # -- the loop ----------------------------------------------------------------------------------------
    def _warmup(self) -> None:
        if self._warm or not self.config.warmup:
            return
        self._warm = True
        warm = getattr(self.runner, "warmup", None)
        if warm is not None:
            t0 = time.perf_counter()
            warm(sorted({1, self.config.max_batch_size}))
            log.info("%s: warm-up took %.0f ms", self.name, (time.perf_counter() - t0) * 1000)
        self._warmed()

    def _loop(self, until_idle: bool = False) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._inbox or self._cancels or self._stopping or until_idle):
                        wait = self._ready_in()
                        if wait is not None and wait <= 0:
                            break
                        self._cond.wait(wait)
                    new, self._inbox = self._inbox, []
                    cancels, self._cancels = self._cancels, []
                    stopping, drain = self._stopping, self._drain
                for job in new:
                    self._take(job)
                for job_id in cancels:
                    self._cancel(job_id)
                if stopping and not drain:
                    break
                wait = self._ready_in()
                if wait is None:
                    if until_idle or stopping:
                        break
                    continue
                if wait > 0 and not (until_idle or stopping):
                    continue  # more work may join the batch before it is due
                self._step()
        finally:
            if not until_idle:
                with self._cond:
                    self._closed = True  # nobody serves the inbox any more: later submits fail at once
            self._loop_ended()

    def _take(self, job: JobT) -> None:
        jid = job.request.job_id
        original = self._jobs.get(jid)
        if original is not None:
            # Redelivered while still here (at-least-once delivery): both futures get one result.
            def copy_result(f: Future[JobResult], dup: JobT = job) -> None:
                with contextlib.suppress(InvalidStateError):
                    dup.future.set_result(f.result())

            original.future.add_done_callback(copy_result)
            return
        self._jobs[jid] = job
        self._admit(job)

    def _settle(self, job: JobT, result: JobResult) -> None:
        """Resolve ``job`` with ``result`` and forget it. Already resolved means stop() raced the loop; the
        first result stands."""
        jid = job.request.job_id
        if self._jobs.get(jid) is job:
            del self._jobs[jid]
        with contextlib.suppress(InvalidStateError):
            job.future.set_result(result)
