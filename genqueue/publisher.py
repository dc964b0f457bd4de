"""Publishing committed jobs: chunks of ids to Redis, then the publish marker in SQL.

The API publishes a bulk submit at once, in chunks. Single submits are coalesced: every job committed within
``publish_window_ms`` goes out in one message per model and priority, from one background thread, so the
broker's per-message cost is paid once per chunk instead of once per job. A request answers after its own
COMMIT and never waits for this thread. If the process dies between the COMMIT and the publish, the job's
``published_at`` is still NULL and the reconciler publishes it (invariant: rows first, then messages).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from celery import Celery

from genqueue import jobstate, queue
from genqueue.db.session import Database
from genqueue.grouping import Grouper
from genqueue.settings import Settings
from genqueue.workers import WorkerCounts

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, settings: Settings, db: Database, app: Celery,
                 on_unpublished: Callable[[int], None] | None = None) -> None:
        self.settings, self.db, self.app = settings, db, app
        self.workers = WorkerCounts(queue.shared_redis(str(app.conf.broker_url)))
        self._on_unpublished = on_unpublished
        self.messages = 0  # published so far (stats and tests)
        # No retries: a publish that fails is the reconciler's, and a retry here would only delay the rest.
        self._coalescer: Grouper[queue.Publication, bool] = Grouper(
            "gq-publish", self._publish_group, linger_s=settings.publish_window_ms / 1000, max_batch=10_000,
            retries=0)

    def max_chunk(self, kind: str) -> int:
        if self.settings.publish_chunk_size:
            return self.settings.publish_chunk_size
        return self.settings.text_max_running if kind == "text" else self.settings.image_max_batch_size

    def chunks(self, items: Sequence[queue.Publication]) -> list[queue.Chunk]:
        return queue.plan_chunks(items, self.max_chunk, self.workers)

    def publish_now(self, items: Sequence[queue.Publication]) -> bool:
        """Publish and mark ``items`` (rows already committed); False when the broker refused them, which
        leaves them to the reconciler."""
        if not items:
            return True
        chunks = self.chunks(items)
        try:
            queue.publish(self.app, chunks)
        except Exception as e:  # the broker is down: the rows are safe in SQL
            log.warning("queue unavailable (%s): %d job(s) stored as queued, to be published by the reconciler",
                        e.__class__.__name__, len(items))
            if self._on_unpublished is not None:
                self._on_unpublished(len(items))
            return False
        self.messages += len(chunks)
        try:
            with self.db.session() as s:
                jobstate.mark_published(s, [(c.message_id, c.job_ids) for c in chunks])
                s.commit()
        except Exception as e:  # the reconciler may publish them once more: harmless, the claim dedups
            log.warning("published %d job(s) but could not mark them: %s", len(items), e)
        return True

    # -- coalesced single submits ------------------------------------------------------------------------
    def submit(self, items: Sequence[queue.Publication]) -> None:
        """Hand committed jobs to the coalescing thread; returns at once."""
        for it in items:
            self._coalescer.submit(it)

    def close(self, timeout: float = 5.0) -> None:
        """Publish what is pending, then stop."""
        self._coalescer.close(timeout)

    def _publish_group(self, items: Sequence[queue.Publication]) -> list[bool]:
        try:
            ok = self.publish_now(items)
        except Exception:  # the reconciler covers what was not published
            log.exception("publisher: %d job(s) left to the reconciler", len(items))
            ok = False
        return [ok] * len(items)
