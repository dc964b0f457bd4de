"""Text engine lanes: several continuous-batching loops over one ONNX Runtime session, one per CPU core.

On a CPU, one decode step of a small model is a chain of small kernels; ORT's intra-op thread pool spends
much of each step synchronizing its threads, and the loop's Python (sampling, bookkeeping) runs while the
cores wait. Measured on 2 cores with the built-in tiny-lm (32 rows of lengths 10..140, random cache): one
2-thread run for 32 rows took 0.59-0.60 ms, two 1-thread runs of 16 rows each on two Python threads
0.43-0.48 ms for the same 32 rows; with another process busy on the machine, 2.15 against 0.84 ms (a pool
that synchronizes on every op suffers most from a stolen core).

Lanes are N :class:`TextEngine` loops, each with its own scheduler, cache and thread, sharing one session
(one copy of the weights) created with one intra-op thread; ORT releases the GIL while it runs, so one
lane's step overlaps another lane's Python. A job runs entirely in one lane (the one with the fewest
unfinished jobs when it arrives), so its tokens are exactly those it would get alone (docs/design.md,
invariant 5): lanes change where a job runs, never what it computes. ``max_batch_size``, the token budget and the KV
budget are split evenly between the lanes, so a job's ``n`` candidates must fit in one lane's share.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import fields, replace

from genqueue.registry import ModelEntry
from genqueue_worker.engine.loop import stop_all
from genqueue_worker.engine.scheduler import Scheduler, SchedulerFactory
from genqueue_worker.engine.text_engine import EngineStats, TextEngine, TextEngineConfig
from genqueue_worker.engine.types import JobResult, TextRequest


class LanedTextEngine:
    """The TextEngine API (submit, cancel, start, stop) over ``config.lanes`` lanes."""

    kind = "text"

    def __init__(self, entry: ModelEntry, provider: str = "auto", config: TextEngineConfig | None = None,
                 scheduler: SchedulerFactory = Scheduler) -> None:
        cfg = config or TextEngineConfig()
        n = max(1, cfg.lanes)
        self.config = cfg
        lane_cfg = replace(
            cfg,
            lanes=1,
            max_batch_size=max(1, math.ceil(cfg.max_batch_size / n)),
            max_tokens_per_step=max(1, cfg.max_tokens_per_step // n),
            max_kv_bytes=max(1, cfg.max_kv_bytes // n),
            prompt_cache_mb=cfg.prompt_cache_mb / n,
            intra_op_threads=1,  # each lane's runs stay on its own thread
        )
        from genqueue_worker.engine.ort_text import OrtTextRunner

        first = TextEngine(entry, provider, lane_cfg, scheduler=scheduler)
        session = first.runner
        assert isinstance(session, OrtTextRunner)  # built from the entry: the lanes share its ORT session
        self.lanes = [first] + [
            TextEngine(entry, provider, lane_cfg, runner=session.sibling(), tokenizer=first.tokenizer,
                       scheduler=scheduler)
            for _ in range(n - 1)
        ]
        self.name = first.name
        self.runner = first.runner
        self.info = first.info
        self.tokenizer = first.tokenizer
        self.prepend_bos = first.prepend_bos
        self._lock = threading.Lock()
        self._load = [0] * n  # unfinished jobs per lane
        self._route: dict[str, list[int]] = {}  # job id -> [lane, unfinished submissions of it]

    @property
    def provider(self) -> str:
        return str(self.runner.provider)

    @property
    def stats(self) -> EngineStats:
        """Every lane's counters added up (``busy_s`` is summed over lanes, so it can exceed wall time)."""
        total = EngineStats()
        for lane in self.lanes:
            for f in fields(EngineStats):
                setattr(total, f.name, getattr(total, f.name) + getattr(lane.stats, f.name))
        return total

    # -- routing ---------------------------------------------------------------------------------------
    def _pick(self, job_id: str) -> int:
        with self._lock:
            route = self._route.get(job_id)  # a redelivered job goes where the first copy runs
            if route is None:
                route = self._route[job_id] = [min(range(len(self.lanes)), key=self._load.__getitem__), 0]
            route[1] += 1
            self._load[route[0]] += 1
            return route[0]

    def _done(self, job_id: str, i: int) -> None:
        with self._lock:
            self._load[i] -= 1
            route = self._route.get(job_id)
            if route is not None:
                route[1] -= 1
                if route[1] <= 0:
                    del self._route[job_id]

    def submit(self, request: TextRequest) -> Future[JobResult]:
        return self.submit_many([request])[0]

    def submit_many(self, requests: Sequence[TextRequest]) -> list[Future[JobResult]]:
        # Each lane gets its share in one hand-off, so that its batch sees them together.
        picks = [self._pick(r.job_id) for r in requests]
        futures: list[Future[JobResult] | None] = [None] * len(requests)
        for lane in sorted(set(picks)):
            idx = [k for k, i in enumerate(picks) if i == lane]
            for k, fut in zip(idx, self.lanes[lane].submit_many([requests[k] for k in idx]), strict=True):
                futures[k] = fut
                fut.add_done_callback(functools.partial(self._on_done, requests[k].job_id, lane))
        return [f for f in futures if f is not None]

    def _on_done(self, job_id: str, lane: int, _f: Future[JobResult]) -> None:
        self._done(job_id, lane)

    def cancel(self, job_id: str) -> None:
        with self._lock:
            route = self._route.get(job_id)
        for lane in self.lanes if route is None else [self.lanes[route[0]]]:
            lane.cancel(job_id)

    # -- life cycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        for lane in self.lanes:
            lane.start()

    def stop(self, drain: bool = True, timeout: float = 30.0) -> None:
        stop_all(self.lanes, drain, timeout)


def create_text_engine(entry: ModelEntry, provider: str, config: TextEngineConfig,
                       scheduler: SchedulerFactory = Scheduler) -> TextEngine | LanedTextEngine:
    """A plain TextEngine for one lane, lanes otherwise. A GPU gets one lane whatever the setting: it
    parallelizes a step by itself, and lanes would only split its batches. Whether a GPU runs is read from
    the session, since onnxruntime-gpu lists CUDA as available even where it falls back to the CPU."""
    lanes = min(config.lanes, config.max_batch_size)  # a lane holds at least one row
    one = replace(config, lanes=1)
    if lanes <= 1 or provider == "cuda":
        return TextEngine(entry, provider, one, scheduler=scheduler)
    engine = LanedTextEngine(entry, provider, replace(config, lanes=lanes), scheduler)
    if engine.provider == "CUDAExecutionProvider":
        return TextEngine(entry, provider, one, scheduler=scheduler)
    return engine
