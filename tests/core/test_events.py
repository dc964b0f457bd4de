"""Job-finished notifications travel over real Redis pub/sub to the waiting API requests."""

from __future__ import annotations

import asyncio

from genqueue import events
from genqueue.queue import redis_client


def test_listener_wakes_waiters_of_published_jobs(redis_scratch_url: str) -> None:
    async def scenario() -> tuple[bool, bool]:
        listener = events.FinishedListener(redis_scratch_url)
        listener.start()
        for _ in range(100):  # until the subscription is live
            if listener.connected:
                break
            await asyncio.sleep(0.02)
        mine, other = listener.register("job-a"), listener.register("job-b")
        await asyncio.sleep(0.05)
        await asyncio.to_thread(events.publish_finished, redis_client(redis_scratch_url), ["job-a", "job-c"])
        try:
            await asyncio.wait_for(mine.wait(), timeout=5)
        finally:
            listener.unregister("job-a", mine)
            await listener.stop()
        return mine.is_set(), other.is_set()

    assert asyncio.run(scenario()) == (True, False)
