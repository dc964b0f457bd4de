"""Celery tasks: thin adapters from a message to genqueue_worker.jobs."""

from __future__ import annotations

import logging

from celery import Celery
from celery.exceptions import Reject

from genqueue.queue import TASK_NAME
from genqueue_worker import jobs
from genqueue_worker.runtime import get_runtime

log = logging.getLogger(__name__)


def register(app: Celery) -> None:
    @app.task(name=TASK_NAME, acks_late=True, ignore_result=True)
    def run_job(job_id: str) -> str:
        # The message carries only the id; everything else is re-read from SQL under a lease.
        try:
            outcome = jobs.process(get_runtime(), job_id)
        except jobs.GiveBack:
            raise Reject(f"worker stopping; job {job_id} given back", requeue=True) from None
        log.info("job %s: %s", job_id, outcome)
        return outcome
