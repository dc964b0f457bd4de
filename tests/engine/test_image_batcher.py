"""Image batching decisions (worker/genqueue_worker/engine/image_batcher.py): a pure class, driven here with
a clock of the test's own; no onnxruntime, no threads."""

from __future__ import annotations

from genqueue_worker.engine.image_batcher import ImageBatcher


def taken(batch: list) -> list[tuple[str, int, int]]:  # type: ignore[type-arg]
    return [(c.owner, c.start, c.count) for c in batch]


def test_nothing_queued_means_nothing_due() -> None:
    b: ImageBatcher[str] = ImageBatcher(max_batch_size=4, max_queue_delay_s=0.01)
    assert b.ready_in(now=0.0) is None and b.next_batch() == []


def test_a_batch_is_due_when_full_or_when_the_oldest_waited_long_enough() -> None:
    b: ImageBatcher[str] = ImageBatcher(max_batch_size=4, max_queue_delay_s=0.010)
    b.add("a", 1, priority=5, now=1.000)
    b.add("b", 2, priority=5, now=1.004)
    assert b.queued_images == 3
    assert abs(b.ready_in(now=1.006) - 0.004) < 1e-9  # counted from the oldest chunk, a's
    assert b.ready_in(now=1.010) == 0.0
    b.add("c", 1, priority=5, now=1.007)
    assert b.ready_in(now=1.007) == 0.0  # 4 images: full, due at once


def test_a_large_job_is_split_into_chunks_that_are_never_split() -> None:
    b: ImageBatcher[str] = ImageBatcher(max_batch_size=4, max_queue_delay_s=0.0)
    assert b.add("big", 10, priority=5, now=0.0) == 3
    assert b.add("small", 3, priority=5, now=0.0) == 1
    assert taken(b.next_batch()) == [("big", 0, 4)]
    assert taken(b.next_batch()) == [("big", 4, 4)]
    # big's last chunk (2) leaves room for 2, and small's chunk of 3 does not fit: it waits, whole.
    assert taken(b.next_batch()) == [("big", 8, 2)]
    assert taken(b.next_batch()) == [("small", 0, 3)]
    assert b.queued_images == 0 and len(b) == 0


def test_chunks_are_taken_by_priority_then_arrival_while_they_fit() -> None:
    b: ImageBatcher[str] = ImageBatcher(max_batch_size=4, max_queue_delay_s=0.0)
    for owner, n, prio in [("late-low", 2, 9), ("first", 1, 5), ("urgent", 2, 0), ("second", 1, 5)]:
        b.add(owner, n, priority=prio, now=0.0)
    assert taken(b.next_batch()) == [("urgent", 0, 2), ("first", 0, 1), ("second", 0, 1)]
    assert taken(b.next_batch()) == [("late-low", 0, 2)]


def test_strict_order_a_chunk_that_does_not_fit_ends_the_batch() -> None:
    b: ImageBatcher[str] = ImageBatcher(max_batch_size=4, max_queue_delay_s=0.0)
    b.add("a", 3, priority=5, now=0.0)
    b.add("b", 2, priority=5, now=0.0)
    b.add("c", 1, priority=5, now=0.0)
    assert taken(b.next_batch()) == [("a", 0, 3)]  # c would fit, but b comes first and does not
    assert taken(b.next_batch()) == [("b", 0, 2), ("c", 0, 1)]


def test_dropped_and_dead_owners_leave_the_queue() -> None:
    b: ImageBatcher[str] = ImageBatcher(max_batch_size=8, max_queue_delay_s=0.0)
    b.add("canceled", 3, priority=5, now=0.0)
    b.add("failed", 2, priority=5, now=0.0)
    b.add("ok", 1, priority=5, now=0.0)
    b.drop("canceled")
    assert b.queued_images == 3
    assert taken(b.next_batch(live=lambda owner: owner != "failed")) == [("ok", 0, 1)]
    assert b.queued_images == 0 and b.ready_in(now=0.0) is None
