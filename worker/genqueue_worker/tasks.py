"""Celery tasks: thin adapters from a message to genqueue_worker.jobs."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.exceptions import Reject

from genqueue.queue import TASK_NAME
from genqueue_worker import jobs, prescreen
from genqueue_worker.runtime import get_runtime

log = logging.getLogger(__name__)


def register(app: Celery) -> None:
    @app.task(name=TASK_NAME, acks_late=True, ignore_result=True, bind=True)
    def run_jobs(self: Any, job_ids: list[str], model: str | None = None) -> dict[str, str]:
        # The message carries only ids; everything else is re-read from SQL under a lease.
        rt = get_runtime()
        ids = [str(i) for i in job_ids] if isinstance(job_ids, list) else []
        with rt.flow.message(len(ids)) as job_done:
            report = jobs.process_message(rt.store, rt, prescreen.text_rules(rt.settings), ids, model, job_done,
                                          message_id=self.request.id)
        if report.given_back:
            # The worker is stopping: the given-back jobs are queued again in SQL, and the message goes back
            # to Redis whole; its finished ids will be skipped by whoever takes it.
            raise Reject(f"worker stopping; {len(report.given_back)} job(s) given back", requeue=True)
        log.info("message of %d job(s): %s", len(ids), report.outcomes)
        return report.outcomes

    @app.task(name="genqueue.run_job", acks_late=True, ignore_result=True)
    def run_job(job_id: str) -> dict[str, str]:
        # One id per message, as published by an API from before chunked messages (a rolling upgrade).
        return run_jobs([job_id])  # type: ignore[no-any-return]
