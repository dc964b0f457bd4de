"""Group work across threads into batches: one call of a batch function for everything that queued up.

The worker's claims and outcome writes go to SQL this way, one transaction each, and the API's publisher
sends the single submits committed within its window as one set of broker messages.

With one transaction per job, a worker spends more time in SQL (and, on SQLite, waiting for the single
writer lock) than in inference for small models. Task threads instead hand their item to a `Grouper` and
wait on a future; its thread takes everything that has queued up (waiting up to ``linger_s`` for more) and
runs one batch function call. The wait is PostgreSQL's ``commit_delay`` with ``commit_siblings``: it is only
worth paying when more items are on their way, so ``linger_if`` (when given) says whether they are; a lone
job on a quiet worker is then written at once instead of waiting out the linger. A message is still acked
only after the transaction holding its outcome has committed, because the task thread returns only when its
future resolves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class Grouper(Generic[T, R]):
    def __init__(self, name: str, run_batch: Callable[[Sequence[T]], Sequence[R]], *, linger_s: float = 0.0,
                 linger_if: Callable[[], bool] | None = None, max_batch: int = 256, retries: int = 2) -> None:
        self.name = name
        self._run_batch = run_batch  # returns one result per item, in order
        self._linger_s = linger_s
        self._linger_if = linger_if  # None: always linger; else only while it returns True
        self._max_batch = max_batch
        self._retries = retries
        self._items: list[tuple[T, Future[R]]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        self.batches = 0  # calls made (stats)
        self.items = 0  # items handled (stats)

    def submit(self, item: T) -> Future[R]:
        fut: Future[R] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            self._items.append((item, fut))
            # Wake the grouping thread only when it has something new to act on: the first item (it may be
            # waiting for work) or a full batch (it may be lingering). Waking it on every item of a burst
            # cost a thread switch per item, for a thread that would only go back to waiting.
            if len(self._items) == 1 or len(self._items) == self._max_batch:
                self._cond.notify()
        return fut

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _take(self) -> list[tuple[T, Future[R]]]:
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if (self._linger_s and len(self._items) < self._max_batch and not self._closed
                    and (self._linger_if is None or self._linger_if())):
                # Give the other deliveries of this burst a moment to join the batch.
                deadline = time.monotonic() + self._linger_s
                while len(self._items) < self._max_batch and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
            batch, self._items = self._items[: self._max_batch], self._items[self._max_batch:]
            return batch

    def _loop(self) -> None:
        while True:
            taken = self._take()
            if not taken:
                return  # closed and drained
            # A waiter that gave up (an asyncio task cancelled while it awaited ``wrap_future``) has cancelled
            # its future: its item is dropped. The others can no longer be cancelled, so that setting their
            # results below cannot raise and end this thread.
            batch = [(item, fut) for item, fut in taken if fut.set_running_or_notify_cancel()]
            if not batch:
                continue
            items = [item for item, _ in batch]
            for attempt in range(self._retries + 1):
                try:
                    results = self._run_batch(items)
                    break
                except Exception as e:  # a DB blip: retry the batch
                    if attempt == self._retries:
                        results = None
                        if len(batch) == 1:
                            log.exception("%s: an item failed", self.name)
                            batch[0][1].set_exception(e)
                        else:
                            self._one_by_one(batch, e)
                        break
                    log.warning("%s: batch failed (%s), retrying", self.name, e)
                    time.sleep(0.2 * (attempt + 1))
            if results is not None:
                for (_, fut), res in zip(batch, results, strict=True):
                    fut.set_result(res)
            self.batches += 1
            self.items += len(batch)

    def _one_by_one(self, batch: list[tuple[T, Future[R]]], error: Exception) -> None:
        """A batch kept failing: run each item alone, so that an item the store refuses (a value PostgreSQL
        cannot hold, say) fails by itself and its neighbours go through."""
        log.warning("%s: batch of %d kept failing (%s); running its items one by one", self.name, len(batch), error)
        for item, fut in batch:
            try:
                fut.set_result(self._run_batch([item])[0])
            except Exception as e:
                log.exception("%s: an item failed", self.name)
                fut.set_exception(e)
