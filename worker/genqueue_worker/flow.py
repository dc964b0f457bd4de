"""How many broker messages a worker holds: enough to keep its engine's batch full, and no more.

A message carries a chunk of jobs, so a fixed prefetch count would either starve the engine (chunks of one
job) or hoard work another idle worker could run (chunks of a full batch). The rule instead: the worker takes
one more message while the jobs it holds, not yet finished by the engine, are fewer than ``target`` (its
largest engine batch by default, GENQUEUE_WORKER_HELD_JOBS). So it holds at most ``target`` jobs plus one
chunk: a full batch, and the next chunk in hand for when rows free up.

It works through Celery's consumer QoS (the prefetch count kombu checks before each fetch), which is set to
the number of messages held plus one while jobs are short, and to the number held otherwise.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any


class Flow:
    def __init__(self, target_jobs: int, max_messages: int) -> None:
        self.target_jobs = max(1, target_jobs)
        self.max_messages = max(1, max_messages)  # the task threads: never more messages than can run
        self.messages = 0  # messages being worked on
        self.jobs = 0  # their jobs not yet finished by the engine
        self._qos: Any = None
        self._lock = threading.Lock()

    @property
    def attached(self) -> bool:
        """Whether Celery's consumer has started (and handed its QoS over)."""
        return self._qos is not None

    @property
    def wanted(self) -> int:
        """The prefetch count the rule asks for now (kombu's 0 would mean "no limit", so never below 1)."""
        more = 1 if self.jobs < self.target_jobs else 0
        return max(1, min(self.max_messages, self.messages + more))

    def attach(self, qos: Any) -> None:
        """Take over the consumer's QoS (a kombu.common.QoS); called from Celery's consumer thread."""
        with self._lock:
            self._qos = qos
            self._set(self.wanted)
        qos.update()

    def apply(self) -> None:
        """Push a changed prefetch count to the channel; runs on the consumer's event loop (a timer), since
        kombu re-arms its fetch only there."""
        qos = self._qos
        if qos is not None and qos.prev != qos.value:
            qos.update()

    @contextlib.contextmanager
    def message(self, n_jobs: int) -> Iterator[Callable[[], None]]:
        """Account for one message of ``n_jobs`` while it is worked on; yields ``job_done``, to be called once
        per job the engine has finished with (or that was skipped)."""
        done = 0
        with self._lock:
            self.messages += 1
            self.jobs += n_jobs
            self._set(self.wanted)

        def job_done() -> None:
            nonlocal done
            with self._lock:
                if done < n_jobs:
                    done += 1
                    self.jobs -= 1
                    self._set(self.wanted)

        try:
            yield job_done
        finally:
            with self._lock:
                self.messages -= 1
                self.jobs -= n_jobs - done
                self._set(self.wanted)

    def _set(self, value: int) -> None:
        # kombu's QoS offers only relative changes to other threads (it applies them on its loop).
        qos = self._qos
        if qos is None:
            return
        delta = value - int(qos.value)
        if delta > 0:
            qos.increment_eventually(delta)
        elif delta < 0:
            qos.decrement_eventually(-delta)
