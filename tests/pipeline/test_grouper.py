"""The worker's SQL grouping (genqueue/grouping.py): items become batches, and the linger is paid only when
more items are on their way."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from genqueue.grouping import Grouper


class Recorder:
    def __init__(self, fail_times: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.fail_times = fail_times
        self.lock = threading.Lock()

    def __call__(self, items: Sequence[int]) -> list[int]:
        with self.lock:
            if self.fail_times:
                self.fail_times -= 1
                raise RuntimeError("database is locked")
            self.batches.append(list(items))
        return [i * 10 for i in items]


def test_a_lone_item_on_a_quiet_worker_does_not_wait_out_the_linger() -> None:
    rec = Recorder()
    g: Grouper[int, int] = Grouper("t", rec, linger_s=5.0, linger_if=lambda: False)
    try:
        t0 = time.monotonic()
        assert g.submit(7).result(timeout=10) == 70
        assert time.monotonic() - t0 < 2.0  # the 5 s linger was skipped
    finally:
        g.close()


def test_items_that_arrive_during_the_linger_share_one_batch() -> None:
    rec = Recorder()
    busy = threading.Event()
    busy.set()
    g: Grouper[int, int] = Grouper("t", rec, linger_s=0.5, linger_if=busy.is_set, max_batch=3)
    try:
        first = g.submit(1)
        time.sleep(0.05)  # inside the first item's linger
        rest = [g.submit(2), g.submit(3)]  # the batch is full at 3: it runs without waiting out the linger
        assert [f.result(timeout=10) for f in [first, *rest]] == [10, 20, 30]
        assert rec.batches == [[1, 2, 3]]
        assert g.batches == 1 and g.items == 3
    finally:
        g.close()


def test_a_failing_batch_is_retried_then_fails_its_items() -> None:
    flaky = Recorder(fail_times=1)
    g: Grouper[int, int] = Grouper("t", flaky, retries=2)
    try:
        assert g.submit(4).result(timeout=10) == 40  # one failure, then the retry commits
    finally:
        g.close()
    broken = Recorder(fail_times=10)
    g2: Grouper[int, int] = Grouper("t", broken, retries=1)
    try:
        with pytest.raises(RuntimeError, match="database is locked"):
            g2.submit(5).result(timeout=10)
        assert broken.batches == []
    finally:
        g2.close()


def test_an_item_the_store_refuses_fails_alone_and_its_neighbours_are_written() -> None:
    written: list[list[int]] = []

    def write(items: Sequence[int]) -> list[int]:
        if 13 in items:  # one transaction for all: one refused value rolls the whole batch back
            raise ValueError("unsupported Unicode escape sequence")
        written.append(list(items))
        return [i * 10 for i in items]

    busy = threading.Event()
    busy.set()
    g: Grouper[int, int] = Grouper("t", write, linger_s=0.5, linger_if=busy.is_set, max_batch=3, retries=1)
    try:
        futs = [g.submit(i) for i in (12, 13, 14)]
        assert futs[0].result(timeout=10) == 120 and futs[2].result(timeout=10) == 140
        with pytest.raises(ValueError, match="unsupported Unicode"):
            futs[1].result(timeout=10)
        assert written == [[12], [14]]  # the batch failed twice, then each item ran alone
    finally:
        g.close()


def test_a_waiter_that_gave_up_is_dropped_and_the_thread_lives_on() -> None:
    # An asyncio task cancelled while it awaits ``wrap_future`` cancels the concurrent future it waits on.
    import asyncio

    started, gate = threading.Event(), threading.Event()
    seen: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int]:
        started.set()
        gate.wait(5)
        seen.append(list(items))
        return [i * 10 for i in items]

    g: Grouper[int, int] = Grouper("test-cancel", run)
    try:
        first = g.submit(1)
        assert started.wait(5)  # item 1's batch is running; the next items queue behind it

        async def give_up() -> None:
            task = asyncio.ensure_future(asyncio.wrap_future(g.submit(2)))
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(give_up())
        third = g.submit(3)
        gate.set()
        assert first.result(5) == 10 and third.result(5) == 30
        assert seen == [[1], [3]]
        assert g.submit(4).result(5) == 40  # still serving
    finally:
        gate.set()
        g.close()
