"""Run one broker message: claim its jobs, hand them all to the engines, write each outcome as it ends.

The message is acked (the task returns) only when every id in it is final, skipped or given back; a
worker that dies before that leaves the whole message to come back, and then only its unfinished ids run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import Any, Protocol

from sqlalchemy.exc import DataError

from genqueue import jobstate, logs
from genqueue.db.models import utcnow
from genqueue.schemas import IMAGE_DEFAULTS, TEXT_DEFAULTS
from genqueue_worker import metrics, prescreen
from genqueue_worker.engine.types import (
    Engine,
    ErrorCode,
    ImageParams,
    ImageRequest,
    JobResult,
    TextParams,
    TextRequest,
)
from genqueue_worker.store import JobStore

log = logging.getLogger(__name__)


class Engines(Protocol):
    """What running a message needs of the worker besides SQL: its engines, and where running jobs are
    tracked (for cancels and lease renewal)."""

    def engine_for(self, model: str, version: str) -> tuple[str, Engine] | None: ...

    def track(self, job_id: str, engine_ref: str, fut: Future[JobResult]) -> None: ...

    def untrack(self, job_id: str) -> None: ...


@dataclass
class MessageReport:
    """What became of each id of one message (for logs and tests)."""

    outcomes: dict[str, str] = field(default_factory=dict)  # "succeeded", "failed:<code>", "skipped:<why>", ...

    @property
    def given_back(self) -> list[str]:
        return [j for j, o in self.outcomes.items() if o == "given_back"]


def build_request(claimed: jobstate.Claimed) -> TextRequest | ImageRequest:
    inp = claimed.input
    if claimed.kind == "text":
        t = TEXT_DEFAULTS
        params = TextParams(
            max_new_tokens=int(inp.get("max_new_tokens", t.max_new_tokens)),
            temperature=float(inp.get("temperature", t.temperature)),
            top_k=int(inp.get("top_k", t.top_k)), top_p=float(inp.get("top_p", t.top_p)),
            repetition_penalty=float(inp.get("repetition_penalty", t.repetition_penalty)),
            no_repeat_ngram_size=int(inp.get("no_repeat_ngram_size", t.no_repeat_ngram_size)),
            stop=tuple(inp.get("stop") or ()), seed=int(inp.get("seed") or 0), n=int(inp.get("n", t.n)),
        )
        return TextRequest(job_id=claimed.job_id, prompt=str(inp.get("prompt", "")), params=params,
                           priority=claimed.priority)
    i = IMAGE_DEFAULTS
    iparams = ImageParams(seed=int(inp.get("seed") or 0), num_images=int(inp.get("num_images", i.num_images)),
                          truncation=float(inp.get("truncation", i.truncation)), class_label=inp.get("class_label"),
                          format=inp.get("format", i.format))
    return ImageRequest(job_id=claimed.job_id, params=iparams, priority=claimed.priority)


@dataclass
class _Write:
    claimed: jobstate.Claimed
    outcome: jobstate.Outcome
    future: Future[bool]
    result: JobResult | None


class _Gate:
    """Jobs on their last attempt run alone in this process: each waits until no other job runs here, and
    holds back new ones while it runs (writer preference). If such a job kills the process, nothing else dies
    with it, so the jobs that shared its earlier deliveries are not charged the attempt that makes it poison."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._alone = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._alone or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._alone or self._shared:
                self._cond.wait()
            self._waiting -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()


_GATE = _Gate()


def process_message(store: JobStore, engines: Engines, rules: Sequence[prescreen.TextRule], job_ids: Sequence[str],
                    model: str | None, job_done: Callable[[], None] = lambda: None,
                    message_id: str | None = None) -> MessageReport:
    """Run every job of one message. ``job_done`` is called once per id as the engine lets go of it;
    ``message_id`` (the broker message's id) goes into the log lines as ``batch_id``."""
    with _GATE.shared():
        report, last = _run(store, engines, rules, store.claim(job_ids, model), model, job_done, message_id)
    for job_id in last:  # each claimed and run with nothing else in this process
        with _GATE.alone():
            alone, _ = _run(store, engines, rules, {job_id: store.claim_alone(job_id, model)}, model, job_done,
                            message_id)
        report.outcomes.update(alone.outcomes)
    return report


def _run(store: JobStore, engines: Engines, rules: Sequence[prescreen.TextRule], claims: dict[str, Any],
         model: str | None, job_done: Callable[[], None], message_id: str | None) -> tuple[MessageReport, list[str]]:
    report = MessageReport()
    last: list[str] = []
    running: dict[Future[JobResult], jobstate.Claimed] = {}
    writes: list[_Write] = []
    starts: dict[str, tuple[Engine, list[tuple[jobstate.Claimed, TextRequest | ImageRequest]]]] = {}
    claimed: dict[tuple[str, int], list[str]] = {}  # (model, attempt) -> ids: one log line each
    for job_id, c in claims.items():
        if isinstance(c, jobstate.Skipped):
            if c.reason == "last_attempt":
                last.append(job_id)
                continue
            if c.reason in ("missing", "other_model"):
                log.warning("job %s skipped: %s (message for model %s)", job_id, c.reason, model)
            else:
                log.info("job %s skipped: %s", job_id, c.reason)
            report.outcomes[job_id] = f"skipped:{c.reason}"
            job_done()
            continue
        claimed.setdefault((c.model, c.attempts), []).append(job_id)
        started = _request(engines, c)
        if isinstance(started, jobstate.Failure):
            writes.append(_Write(c, started, store.write(started), None))
            job_done()
        else:
            starts.setdefault(started[0], (started[1], []))[1].append((c, started[2]))
    for (claimed_model, attempt), ids in claimed.items():
        logs.jobs_event(log, "claimed", ids, model=claimed_model, attempt=attempt, batch_id=message_id)
    # Every job of the message reaches its engine in one hand-off: submitted one at a time, the first ones
    # would start a batch of their own once the image batcher's queue delay ran out.
    for ref, (engine, group) in starts.items():
        for (c, _), fut in zip(group, engine.submit_many([r for _, r in group]), strict=True):
            engines.track(c.job_id, ref, fut)
            running[fut] = c
    # Each job is written the moment the engine hands it back: a short job never waits for the chunk's
    # longest one (its write joins the worker's next grouped commit).
    # One queue that every future reports to: ``wait(FIRST_COMPLETED)`` over the pending set would install
    # and remove a waiter on every still-running future each time one finishes, O(n²) per chunk.
    done: SimpleQueue[Future[JobResult]] = SimpleQueue()
    for fut in running:
        fut.add_done_callback(done.put)
    for _ in range(len(running)):
        fut = done.get()
        c = running[fut]
        engines.untrack(c.job_id)
        job_done()
        try:
            result = fut.result()
        except Exception as e:  # the engine broke outside its own isolation: this job fails alone
            log.exception("job %s: engine error", c.job_id)
            result = JobResult(job_id=c.job_id, status="failed", error_code=ErrorCode.engine_error,
                               error_message=f"engine error: {e}")
        outcome = _outcome(c, result, rules)
        if outcome is None:
            report.outcomes[c.job_id] = "canceled"  # the API already marked the row
            continue
        writes.append(_Write(c, outcome, store.write(outcome), result))
    succeeded: dict[str, list[str]] = {}  # model -> ids: one log line each (a failure has a line of its own)
    try:
        for w in writes:
            word = report.outcomes[w.claimed.job_id] = _settle(store, w)
            if word == "succeeded":
                succeeded.setdefault(w.claimed.model, []).append(w.claimed.job_id)
    finally:  # the jobs settled before a write broke are logged all the same
        for done_model, ids in succeeded.items():
            logs.jobs_event(log, "succeeded", ids, model=done_model, batch_id=message_id)
    return report, last


def _request(engines: Engines, c: jobstate.Claimed
             ) -> jobstate.Failure | tuple[str, Engine, TextRequest | ImageRequest]:
    """The engine (and its name) that runs this job, with the job's request; or why it cannot run here."""
    found = engines.engine_for(c.model, c.model_version)
    if found is None:
        return jobstate.Failure(c.job_id, "model_unavailable", f"this worker does not serve {c.model}@{c.model_version}")
    ref, engine = found
    try:
        return ref, engine, build_request(c)
    except (TypeError, ValueError) as e:
        return jobstate.Failure(c.job_id, ErrorCode.invalid_input.value, f"invalid input: {e}")


def _outcome(c: jobstate.Claimed, result: JobResult, rules: Sequence[prescreen.TextRule]) -> jobstate.Outcome | None:
    queue_ms = (c.started_at - c.created_at).total_seconds() * 1000
    job_metrics: dict[str, Any] = {"queue_ms": round(queue_ms, 2), **{k: round(v, 3) for k, v in result.metrics.items()}}
    if result.status == "canceled":
        return None
    if result.status == "failed":
        code = result.error_code or ErrorCode.engine_error
        if code is ErrorCode.shutdown:
            return jobstate.Release(c.job_id)
        return jobstate.Failure(c.job_id, code.value, result.error_message or code.value, job_metrics)
    output = dict(result.output or {})
    images = [(im.data, im.width, im.height, im.format) for im in result.images]
    t0 = time.perf_counter()
    if c.kind == "text":
        flags = prescreen.text_flags(list(output.get("texts", [])), rules)
    else:
        # The engine measured each image's grey levels before encoding; decoding the file again cost ~45 us
        # per image here.
        flags = prescreen.image_flags(
            [im.luma_std if im.luma_std is not None else prescreen.decoded_luma_std(im.data) for im in result.images]
        )
        output["images"] = [
            {"url": f"/v1/jobs/{c.job_id}/images/{i}", "width": w, "height": h, "format": fmt}
            for i, (_, w, h, fmt) in enumerate(images)
        ]
    job_metrics["prescreen_ms"] = round((time.perf_counter() - t0) * 1000, 3)
    # What happens to the output (its review row) is decided where it is written, in genqueue.review.
    return jobstate.Success(c.job_id, output, job_metrics, images, flags)


def _settle(store: JobStore, w: _Write) -> str:
    """Wait for one write's commit; returns the job's outcome word."""
    c, o = w.claimed, w.outcome
    try:
        ok = w.future.result()
    except DataError as e:
        if not isinstance(o, jobstate.Success):
            raise
        # The store refused a value in this output. Running the job again would give the same output (it is
        # seeded), so it fails now instead of coming back until its attempts run out.
        log.warning("job %s: the store refused its output: %s", c.job_id, e.orig)
        reason = (str(e.orig).splitlines() or ["refused"])[0].replace("\x00", "\ufffd")  # the message is stored too
        o = jobstate.Failure(c.job_id, ErrorCode.postprocess_error.value, f"the output could not be stored: {reason}",
                             o.metrics)
        ok = store.write(o).result()
    if isinstance(o, jobstate.Release):
        return "given_back" if ok else "dropped:not_owner"
    word = "succeeded" if isinstance(o, jobstate.Success) else f"failed:{o.code}"
    if ok:
        status, _, code = word.partition(":")
        latency = (utcnow() - c.created_at).total_seconds()
        queue_s = (c.started_at - c.created_at).total_seconds()
        metrics.observe(c.model, c.kind, status, (w.result.metrics if w.result else {}), latency, code or None,
                        queue_s=queue_s)
        if code:  # successes are logged by the message, one line per model
            logs.job_event(log, status, c.job_id, model=c.model, code=code)
        return word
    return "dropped:not_owner"
