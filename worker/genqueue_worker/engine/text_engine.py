"""Text engine: continuous (iteration-level) batching over an explicit KV cache, in one loop thread.

Three parts, after vLLM v1's split, joined by :meth:`TextEngine._step`:

* the scheduler (scheduler.py) decides every step: which rows leave, which rows decode, which jobs are
  admitted, whether freed slots refill in the same step, which waiting prompts run ahead;
* the batch (text_batch.py) runs it: cache rows, prefill and decode calls, retries, the prompt cache;
* the output processor (text_output.py) samples and accepts tokens, matches stop strings and builds results.

Each step drops the leaving rows from the cache, runs one decode step for the batch, prefills the admitted
jobs, samples, ends rows at EOS / stop string / length, appends the new rows, and resolves the future of
every job that finished in this step at once (the glue writes and acks it then). The loop itself (inbox,
cancels, stop and drain) is the one both engines share (loop.py).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from genqueue.registry import ModelEntry, ModelKind
from genqueue_worker.engine.kv_append import AppendKVCache
from genqueue_worker.engine.kv_cache import HostKVCache, KVCache
from genqueue_worker.engine.kv_ragged import RaggedKVCache
from genqueue_worker.engine.loop import SHUTDOWN_MESSAGE, EngineLoop
from genqueue_worker.engine.prompt_cache import Prefilled, PromptCache
from genqueue_worker.engine.runner import TextModelInfo, TextRunner, ort_runner
from genqueue_worker.engine.sampling import SamplingState, StopMatcher, validate_text_params
from genqueue_worker.engine.scheduler import (
    BatchScheduler,
    FinishReason,
    Scheduler,
    SchedulerConfig,
    SchedulerFactory,
    SchedulerOutput,
    SequenceGroup,
)
from genqueue_worker.engine.text_batch import EngineStats, TextBatch
from genqueue_worker.engine.text_output import OutputProcessor, TextJob
from genqueue_worker.engine.textproc import encode_prompt, load_tokenizer, max_new_tokens_for
from genqueue_worker.engine.types import ErrorCode, JobResult, TextRequest

log = logging.getLogger("genqueue.worker.engine")

__all__ = ["EngineStats", "TextEngine", "TextEngineConfig"]


@dataclass(frozen=True)
class TextEngineConfig:
    max_batch_size: int = 32  # rows (candidate sequences) decoded together
    max_tokens_per_step: int = 2048  # prompt tokens prefilled + rows decoded in one step
    max_kv_bytes: int = 1 << 30  # KV memory budget (double-buffered host cache counted twice)
    max_attempts: int = 2  # solo tries of each job after a runner exception hit its batch
    intra_op_threads: int = 0  # ORT threads; 0 = ORT default (one per physical core)
    allow_spinning: bool = True  # ORT threads busy-wait between ops (fastest alone; off when sharing cores)
    warmup: bool = True  # run common shapes once at start()
    trim_slack: int = 2  # re-lay the cache out once its common left padding exceeds this many columns
    return_token_ids: bool = False  # add output["token_ids"] (generated ids per candidate, EOS excluded)
    lanes: int = 1  # CPU: independent batching loops sharing one session (lanes.py); 1 = this engine alone
    # A prefill call also runs the prompts of up to this many waiting jobs, which then join the batch later
    # without a call of their own (0 = off); the scheduler chooses them (Scheduler.prefill_ahead).
    prefill_ahead: int = 8
    # Prefill results of recent prompts, reused when the same prompt comes again (prompt_cache.py); 0 = off.
    prompt_cache_mb: float = 32.0


class TextEngine(EngineLoop[TextRequest, TextJob]):
    """One text model. ``start()`` runs the loop in a thread; ``run_all()`` runs it in the caller's thread.
    ``scheduler`` builds the batching policy (default: continuous, :class:`Scheduler`)."""

    kind = "text"
    config: TextEngineConfig
    runner: TextRunner
    info: TextModelInfo

    def __init__(self, entry: ModelEntry | None = None, provider: str = "auto", config: TextEngineConfig | None = None,
                 *, runner: TextRunner | None = None, tokenizer: Any = None,
                 scheduler: SchedulerFactory = Scheduler) -> None:
        cfg = config or TextEngineConfig()
        super().__init__(cfg, entry, runner or ort_runner(entry, ModelKind.text, provider, cfg))
        if tokenizer is None:
            if entry is None or entry.tokenizer_path is None:
                raise ValueError("TextEngine needs a tokenizer (or a ModelEntry with tokenizer.json)")
            tokenizer = load_tokenizer(entry.tokenizer_path)
        self.tokenizer = tokenizer
        text_spec = entry.manifest.text if entry is not None else None
        self.prepend_bos = bool(text_spec and text_spec.prepend_bos)
        self.batch = TextBatch(self.runner, self._fail, name=self.name, max_attempts=cfg.max_attempts,
                               prompt_cache_bytes=int(cfg.prompt_cache_mb * (1 << 20)))
        self.outputs = OutputProcessor(tokenizer, self.info, self._fail, cfg.return_token_ids)
        copies = 2 if isinstance(self.batch.cache, HostKVCache | AppendKVCache | RaggedKVCache) else 1
        sched_cfg = SchedulerConfig(
            max_num_seqs=cfg.max_batch_size,
            max_tokens_per_step=cfg.max_tokens_per_step,
            max_kv_bytes=cfg.max_kv_bytes,
            kv_bytes_per_token=self.info.kv_bytes_per_token * copies,
            prefill_ahead=cfg.prefill_ahead,
        )
        self.scheduler: BatchScheduler = scheduler(sched_cfg, self._at_hand)
        self._retired: list[TextJob] = []  # resolved jobs whose seq ids are forgotten at the step boundary

    # what tests and benchmarks read
    @property
    def stats(self) -> EngineStats:
        return self.batch.stats

    @property
    def cache(self) -> KVCache:
        return self.batch.cache

    @property
    def prompts(self) -> PromptCache:
        return self.batch.prompts

    # -- submission (caller's thread) --------------------------------------------------------------------
    def _prepare(self, req: TextRequest, future: Future[JobResult]) -> TextJob | None:
        """Validate and tokenize on the caller's thread; a bad job fails here without touching the batch."""
        p = req.params
        dummy = TextJob(req, future, [], SequenceGroup(req.job_id, 1, 1), [], [], [], submitted=time.perf_counter())
        problem = validate_text_params(p)
        if problem is None and p.n > self.config.max_batch_size:
            problem = f"n={p.n} exceeds the engine's max_batch_size={self.config.max_batch_size}"
        if problem is not None:
            self._settle(dummy, self._failed(dummy, ErrorCode.invalid_input, problem))
            return None
        try:
            ids = encode_prompt(self.tokenizer, req.prompt, self.info.bos_token_id, self.prepend_bos)
        except Exception as e:  # the tokenizer rejected this prompt: fail this job alone
            self._settle(dummy, self._failed(dummy, ErrorCode.preprocess_error, f"tokenizing failed: {e}"))
            return None
        ctx = self.info.context_length
        max_new = max_new_tokens_for(len(ids), p.max_new_tokens, ctx)
        if max_new < 1:
            msg = f"the prompt is {len(ids)} tokens; the model's context is {ctx} tokens including the output"
            self._settle(dummy, self._failed(dummy, ErrorCode.prompt_too_long, msg))
            return None
        eos = None if p.ignore_eos else self.info.eos_token_id
        group = SequenceGroup(req.job_id, len(ids), max_new, n=p.n, priority=req.priority, eos_token_id=eos)
        states = [SamplingState.create(p, i, ids, self.info.vocab_size) for i in range(p.n)]
        stops = [StopMatcher(p.stop) for _ in range(p.n)]
        texts = self.outputs.new_texts(p.n) if p.stop else []
        return TextJob(req, future, ids, group, states, stops, texts, submitted=dummy.submitted)

    # -- the loop's hooks (loop thread) ------------------------------------------------------------------
    def _warmed(self) -> None:
        self.batch.reserve(self.config.max_batch_size, self.config.max_kv_bytes)

    def _admit(self, job: TextJob) -> None:
        self.scheduler.add(job.group)

    def _ready_in(self) -> float | None:
        return 0.0 if self.scheduler.has_work() else None

    def _cancel(self, job_id: str) -> None:
        g = self.scheduler.finish_group(job_id, FinishReason.canceled)
        job = self._jobs.get(job_id)
        if g is not None and job is not None:
            self._resolve(job, "canceled")

    def _loop_ended(self) -> None:
        for g in self.scheduler.abort_all(FinishReason.failed):
            left = self._jobs.get(g.group_id)
            if left is not None:
                self._settle(left, self._failed(left, ErrorCode.shutdown, SHUTDOWN_MESSAGE))
        self.batch.clear()

    def _step(self) -> None:
        self._forget_retired()
        t0 = time.perf_counter()
        try:
            self._execute(self.scheduler.schedule(), t0, decode=True)
            refill = self.scheduler.refill()
            if refill is not None:
                self._execute(refill, t0, decode=False)
        except Exception as e:  # a bug, not a runner failure (those are handled per job)
            self._recover(e)
            return
        self._forget_retired()
        self.stats.steps += 1
        self.stats.busy_s += time.perf_counter() - t0

    # -- one step ----------------------------------------------------------------------------------------
    def _execute(self, out: SchedulerOutput, t0: float, decode: bool) -> None:
        """Run one scheduler output: drop the rows that left, decode the batch (unless ``decode`` is False),
        prefill the admitted jobs, record the tokens and resolve the jobs that finished."""
        batch = self.batch
        if out.removed:
            batch.remove_rows(out.removed)
        sampled: dict[int, int] = {}
        ended: dict[int, FinishReason] = {}
        if decode and batch.row_seq:
            seqs, cands, logits = batch.decode(out.padded)
            if seqs:
                self.outputs.accept(seqs, cands, logits, sampled, ended)
        results: list[tuple[TextJob, Prefilled]] = []
        if out.prefill:
            results = self._prefill([self._jobs[g.group_id] for g in out.prefill], t0)
            self.outputs.accept_prefill(results, sampled, ended)
        done = self.scheduler.update_from_output(out, sampled, ended)
        for job, p in results:
            take = [s.seq_id for s in job.group.seqs if self.scheduler.has_row(s.seq_id)]
            if job.error is None and take:
                batch.append(p.block, take)
        for g in done:
            finished = self._jobs.get(g.group_id)
            if finished is not None:
                self._resolve(finished, "failed" if finished.error else "succeeded")

    def _prefill(self, jobs: list[TextJob], t0: float) -> list[tuple[TextJob, Prefilled]]:
        """The admitted jobs' prefill results: at hand, or from one call that also runs the waiting prompts
        the scheduler chose to run ahead."""
        for job in jobs:
            job.admitted = t0
            self.batch.bind(job)
        done, todo = self.batch.lookup(jobs)
        if todo:
            held = sum(len(j.prompt_ids) for j in self._jobs.values() if j.prefilled is not None)
            ahead = [self._jobs[g.group_id] for g in self.scheduler.prefill_ahead([j.group for j in todo], held)]
            self.batch.prefill(todo, ahead, done)
        return [(j, done[j.request.job_id]) for j in jobs if j.request.job_id in done and j.error is None]

    def _at_hand(self, g: SequenceGroup) -> bool:
        """For the scheduler: whether ``g``'s prefill result is held already (the cache only changes inside
        a prefill, after every admitted job has looked its prompt up, so what is said here holds for the
        step)."""
        job = self._jobs.get(g.group_id)
        return job is not None and self.batch.at_hand(job)

    def _forget_retired(self) -> None:
        # Deferred to the step boundary: a job failed mid-step may still have candidates in this step's loops.
        for job in self._retired:
            self.batch.forget(job)
        self._retired.clear()

    # -- ending jobs ---------------------------------------------------------------------------------------
    def _resolve(self, job: TextJob, status: str) -> None:
        self._retired.append(job)
        self._settle(job, self.outputs.result(job, status))

    def _fail(self, job: TextJob, code: ErrorCode, message: str) -> None:
        if job.error is not None:
            return
        job.error = (code, message)
        log.info("%s: job %s failed: %s (%s)", self.name, job.request.job_id, code.value, message)
        self.scheduler.finish_group(job.request.job_id, FinishReason.failed)
        if self._jobs.get(job.request.job_id) is job:
            self._resolve(job, "failed")

    def _failed(self, job: TextJob, code: ErrorCode, message: str) -> JobResult:
        job.error = (code, message)
        self._retired.append(job)
        return self.outputs.result(job, "failed")

    def _recover(self, error: Exception) -> None:
        """An unexpected error inside a step: the batch state cannot be trusted, so every admitted job
        fails with engine_error (the glue may retry them) and the engine starts clean."""
        log.exception("%s: internal error in a step; failing the %d admitted jobs", self.name, len(self._jobs))
        for g in self.scheduler.abort_all(FinishReason.failed):
            job = self._jobs.get(g.group_id)
            if job is not None:
                self._settle(job, self._failed(job, ErrorCode.engine_error, f"internal engine error: {error!r}"))
        self.batch.reset()
        self._retired.clear()
