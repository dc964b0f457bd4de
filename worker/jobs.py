"""Run one delivered job: claim it, hand it to the engine, write its outcome, then let Celery ack."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.exc import DataError

from genqueue.db.models import utcnow
from genqueue_worker import metrics, prescreen, service
from genqueue_worker.engine.types import (
    ErrorCode,
    ImageParams,
    ImageRequest,
    JobResult,
    TextParams,
    TextRequest,
)
from genqueue_worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)


class GiveBack(Exception):
    """The worker is stopping: the job was released and its message must be requeued, not acked."""


def build_request(claimed: service.Claimed) -> TextRequest | ImageRequest:
    inp = claimed.input
    if claimed.kind == "text":
        params = TextParams(
            max_new_tokens=int(inp.get("max_new_tokens", 64)), temperature=float(inp.get("temperature", 0.8)),
            top_k=int(inp.get("top_k", 0)), top_p=float(inp.get("top_p", 1.0)),
            repetition_penalty=float(inp.get("repetition_penalty", 1.0)),
            no_repeat_ngram_size=int(inp.get("no_repeat_ngram_size", 0)), stop=tuple(inp.get("stop") or ()),
            seed=int(inp.get("seed") or 0), n=int(inp.get("n", 1)),
        )
        return TextRequest(job_id=claimed.job_id, prompt=str(inp.get("prompt", "")), params=params,
                           priority=claimed.priority)
    iparams = ImageParams(seed=int(inp.get("seed") or 0), num_images=int(inp.get("num_images", 1)),
                          truncation=float(inp.get("truncation", 1.0)), class_label=inp.get("class_label"),
                          format=inp.get("format", "png"))
    return ImageRequest(job_id=claimed.job_id, params=iparams, priority=claimed.priority)


def process(rt: WorkerRuntime, job_id: str) -> str:
    """Returns what happened, for logs and tests. Raises GiveBack on shutdown."""
    claimed = rt.claimer.submit(job_id).result()
    if isinstance(claimed, service.Skipped):
        log.info("job %s skipped: %s", job_id, claimed.reason)
        return f"skipped:{claimed.reason}"
    found = rt.engine_for(claimed.model, claimed.model_version)
    if found is None:
        rt.writer.submit(service.Failure(job_id, "model_unavailable",
                                         f"this worker does not serve {claimed.model}@{claimed.model_version}")).result()
        return "failed:model_unavailable"
    ref, engine = found
    queue_ms = (claimed.started_at - claimed.created_at).total_seconds() * 1000
    try:
        request = build_request(claimed)
    except (TypeError, ValueError) as e:
        rt.writer.submit(service.Failure(job_id, ErrorCode.invalid_input.value, f"invalid input: {e}")).result()
        return "failed:invalid_input"
    fut = engine.submit(request)
    rt.track(job_id, ref, fut)
    try:
        result: JobResult = fut.result()
    finally:
        rt.untrack(job_id)
    return record(rt, claimed, result, queue_ms)


def record(rt: WorkerRuntime, claimed: service.Claimed, result: JobResult, queue_ms: float) -> str:
    outcome = _record(rt, claimed, result, queue_ms)
    latency = (utcnow() - claimed.created_at).total_seconds()
    kind, status, _, code = claimed.kind, *outcome.partition(":")
    metrics.observe(claimed.model, kind, status, result.metrics, latency, code or None)
    return outcome


def _record(rt: WorkerRuntime, claimed: service.Claimed, result: JobResult, queue_ms: float) -> str:
    job_id = claimed.job_id
    job_metrics: dict[str, Any] = {"queue_ms": round(queue_ms, 2), **{k: round(v, 3) for k, v in result.metrics.items()}}
    if result.status == "canceled":
        return "canceled"  # the API already marked the row; nothing to write
    if result.status == "failed":
        code = result.error_code or ErrorCode.engine_error
        if code is ErrorCode.shutdown:
            rt.writer.submit(service.Release(job_id)).result()
            raise GiveBack(job_id)
        rt.writer.submit(service.Failure(job_id, code.value, result.error_message or code.value, job_metrics)).result()
        return f"failed:{code.value}"
    output = dict(result.output or {})
    images = [(im.data, im.width, im.height, im.format) for im in result.images]
    t0 = time.perf_counter()
    if claimed.kind == "text":
        flags = prescreen.text_flags(list(output.get("texts", [])), prescreen.text_rules(rt.settings))
    else:
        # The engine measured each image's grey levels before encoding; decoding the file again cost ~45 us
        # per image here, on the task thread.
        flags = prescreen.image_flags(
            [im.luma_std if im.luma_std is not None else prescreen.decoded_luma_std(im.data) for im in result.images]
        )
        output["images"] = [
            {"url": f"/v1/jobs/{job_id}/images/{i}", "width": w, "height": h, "format": fmt}
            for i, (_, w, h, fmt) in enumerate(images)
        ]
    job_metrics["prescreen_ms"] = round((time.perf_counter() - t0) * 1000, 3)
    try:
        ok = rt.writer.submit(service.Success(job_id, output, job_metrics, images, flags)).result()
    except DataError as e:
        # The store refused a value in this output. Running the job again would give the same output (it is
        # seeded), so it fails now instead of coming back until its attempts run out.
        log.warning("job %s: the store refused its output: %s", job_id, e.orig)
        reason = (str(e.orig).splitlines() or ["refused"])[0].replace("\x00", "\ufffd")  # the message is stored too
        message = f"the output could not be stored: {reason}"
        rt.writer.submit(service.Failure(job_id, ErrorCode.postprocess_error.value, message, job_metrics)).result()
        return f"failed:{ErrorCode.postprocess_error.value}"
    return "succeeded" if ok else "dropped:not_owner"
