"""Job-finished notifications over Redis pub/sub, so that `Prefer: wait` answers the moment a job ends.

Workers publish the ids of the jobs whose outcome they have just committed; each API process keeps one
subscription and wakes the requests waiting on those ids. Pub/sub is only a hint: a waiter always re-reads
the row, and falls back to polling SQL when Redis is unreachable, so a lost message costs latency only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from genqueue import embedded

log = logging.getLogger(__name__)
CHANNEL = "genqueue:jobs:finished"


def publish_finished(client: object, job_ids: Iterable[str]) -> None:
    """One PUBLISH for a group of job ids (space separated)."""
    ids = " ".join(job_ids)
    if ids:
        client.publish(CHANNEL, ids)  # type: ignore[attr-defined]


class FinishedListener:
    """One subscription per API process, fanned out to the requests waiting on each job id."""

    def __init__(self, broker_url: str) -> None:
        self.url = embedded.redis_py_url(broker_url)
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="gq-finished-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # redis-py's pubsub can stall in its own close after a cancelled read; a shutdown must not wait
            # on it (the connection goes with the process).
            done, _ = await asyncio.wait({self._task}, timeout=2.0)
            for t in done:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    t.result()
            if not done:
                log.warning("job notifications listener did not stop within 2 s; leaving it")
            self._task = None

    def register(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        return event

    def unregister(self, job_id: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(job_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[job_id]

    async def _run(self) -> None:
        import redis.asyncio as aioredis

        while True:
            try:
                client = aioredis.Redis.from_url(self.url)
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self.connected = True
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        for job_id in message["data"].decode().split():
                            for event in self._waiters.get(job_id, ()):
                                event.set()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis went away: waiters poll SQL until it is back
                if self.connected:
                    log.warning("job notifications lost (%s); waiting requests poll SQL meanwhile", e)
                self.connected = False
                await asyncio.sleep(1.0)
