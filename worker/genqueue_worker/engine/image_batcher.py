"""Image batching decisions, in the style of Triton's dynamic batcher: a pure class, no threads, no ORT.

Jobs queue as chunks of images (a job larger than ``max_batch_size`` is split into chunks of that size; a
chunk is never split). A batch is due once ``max_batch_size`` images are queued or the oldest has waited
``max_queue_delay_s``; it takes chunks in (priority, arrival) order while they fit. The image engine asks
:meth:`ImageBatcher.ready_in` when to run and :meth:`ImageBatcher.next_batch` what to run; tests drive it
with a clock of their own.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class Chunk(Generic[T]):
    owner: T  # the job
    start: int  # first image index
    count: int  # images
    queued_at: float  # when queued (the batching window starts from the oldest)


class ImageBatcher(Generic[T]):
    def __init__(self, max_batch_size: int, max_queue_delay_s: float) -> None:
        self.max_batch_size = max_batch_size  # images per forward
        self.max_queue_delay_s = max_queue_delay_s  # how long the oldest queued image may wait for company
        self._queue: list[tuple[int, int, Chunk[T]]] = []  # heap of (priority, arrival, chunk)
        self._arrivals = itertools.count()
        self.queued_images = 0

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, owner: T, num_images: int, priority: int, now: float) -> int:
        """Queue a job's images; returns how many chunks it became."""
        size = self.max_batch_size
        chunks = 0
        for start in range(0, num_images, size):
            chunk = Chunk(owner, start, min(size, num_images - start), now)
            heapq.heappush(self._queue, (priority, next(self._arrivals), chunk))
            self.queued_images += chunk.count
            chunks += 1
        return chunks

    def ready_in(self, now: float) -> float | None:
        """Seconds until a batch is due: None when nothing is queued, 0 when one is due now (full, or the
        oldest chunk waited long enough)."""
        if not self._queue:
            return None
        if self.queued_images >= self.max_batch_size:
            return 0.0
        oldest = min(e[2].queued_at for e in self._queue)
        return max(0.0, oldest + self.max_queue_delay_s - now)

    def next_batch(self, live: Callable[[T], bool] = lambda _: True) -> list[Chunk[T]]:
        """Pop chunks in (priority, arrival) order while they fit in one forward; chunks whose owner is no
        longer ``live`` are dropped on the way."""
        batch: list[Chunk[T]] = []
        room = self.max_batch_size
        while self._queue and self._queue[0][2].count <= room:
            chunk = heapq.heappop(self._queue)[2]
            self.queued_images -= chunk.count
            if not live(chunk.owner):
                continue
            batch.append(chunk)
            room -= chunk.count
        return batch

    def drop(self, owner: T) -> None:
        """Remove the queued chunks of ``owner``."""
        kept = [e for e in self._queue if e[2].owner is not owner]
        if len(kept) != len(self._queue):
            self._queue = kept
            heapq.heapify(self._queue)
            self.queued_images = sum(e[2].count for e in kept)
