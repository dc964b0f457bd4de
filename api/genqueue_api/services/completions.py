"""OpenAI's Completions API, synchronously: the request becomes a text job that runs through the queue like
any other (validation, review policy, batching on the workers), and the answer waits for it."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool

from genqueue.db.models import ApiKey
from genqueue.enums import JobStatus
from genqueue_api.errors import ApiError
from genqueue_api.services import jobs as jobs_service
from genqueue_api.services import openai_compat
from genqueue_api.services.openai_compat import OpenAIError
from genqueue_api.state import AppState
from genqueue_api.store import jobs as jobs_store


async def create(state: AppState, key: ApiKey, body: Any) -> dict[str, Any]:
    request = openai_compat.job_request(body)
    await run_in_threadpool(openai_compat.check_text_model, state, request["model"])
    try:
        def _create() -> Any:
            with state.db.session() as s:
                return jobs_service.create_job(state, s, key, request, None)[0]

        job = await run_in_threadpool(_create)
    except ApiError as e:
        raise openai_compat.from_api_error(e) from None
    timeout = state.settings.completions_timeout_s
    job = await jobs_service.wait_for(state, key, job, timeout)
    if not job.status.terminal and await run_in_threadpool(_give_up, state, key, job.id):
        raise OpenAIError(504, "timeout", f"job {job.id} did not finish within {timeout:g} s; it was canceled")

    def _row() -> Any:
        with state.db.session() as s:
            return jobs_store.get(s, job.id)

    row = await run_in_threadpool(_row)
    if row is None or row.status != JobStatus.succeeded.value:
        raise openai_compat.job_error(row) if row is not None else OpenAIError(500, "engine_error", "job lost")
    return openai_compat.completion(row)


def _give_up(state: AppState, key: ApiKey, job_id: str) -> bool:
    """Cancels a job whose client will be told it timed out, so that it does not run on unseen; False when
    it ended meanwhile (and its outcome is the answer after all)."""
    with state.db.session() as s:
        try:
            jobs_service.cancel_job(s, key, job_id)
        except ApiError:
            return False
    return True
