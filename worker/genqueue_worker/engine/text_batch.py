"""The persistent decode batch: cache rows and their sequences, the prefill and decode calls, retries, and the
prompt cache. It runs what the scheduler decided; it decides nothing about who runs.

Row r of the KV cache belongs to sequence ``row_seq[r]``; rows leave by swap-remove (kv_cache.py), so the
cache hands back the new order and ``row_seq`` follows it. A prefill call runs only the distinct prompts that
are not at hand already (run ahead by an earlier call, or in the prompt cache, prompt_cache.py), together
with the waiting prompts the scheduler chose to run ahead.

Failure isolation (invariant 3): a runner exception retries each job of the failed call alone
(``max_attempts`` times) and fails only those that keep failing, with ``engine_error``; the neighbours carry
on, and a failed decode rebuilds the cache from the rows that succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from genqueue_worker.engine.kv_cache import KVBlock, KVCache, prefill_inputs
from genqueue_worker.engine.prompt_cache import Prefilled, PromptCache
from genqueue_worker.engine.runner import TextRunner
from genqueue_worker.engine.text_output import Fail, TextJob
from genqueue_worker.engine.types import ErrorCode

log = logging.getLogger("genqueue.worker.engine")


@dataclass
class EngineStats:
    """Counters for benchmarks and profiling (loop thread writes, anyone may read)."""

    steps: int = 0  # scheduler steps that ran something
    decode_calls: int = 0
    decode_rows: int = 0  # rows computed by decode steps (static padding rows included)
    useful_rows: int = 0  # decode rows whose token was kept (not static padding, not a failed job)
    prefill_calls: int = 0
    prefill_tokens: int = 0  # padded prompt tokens computed
    prefill_ahead_rows: int = 0  # prompts of waiting jobs run ahead, inside another admission's call
    prompt_cache_hits: int = 0  # admitted jobs whose prompt came from the prompt cache (no call)
    prefill_rows_shared: int = 0  # prompts that a call ran once for several jobs (identical prompts)
    retries: int = 0  # solo retries after runner exceptions
    busy_s: float = 0.0  # time spent inside steps


class TextBatch:
    """The rows in the decode batch and the calls that compute them (loop thread only)."""

    def __init__(self, runner: TextRunner, fail: Fail, *, name: str, max_attempts: int, prompt_cache_bytes: int) -> None:
        self.runner = runner
        self.info = runner.info
        self.name = name
        self.max_attempts = max_attempts  # solo tries of each job after a runner exception hit its call
        self._fail = fail  # ends a job now (the engine's)
        self.cache: KVCache = runner.new_cache()
        self.prompts = PromptCache(prompt_cache_bytes)
        self.stats = EngineStats()
        self.row_seq: list[int] = []  # seq id of each cache row, in row order
        self.seq_job: dict[int, tuple[TextJob, int]] = {}  # seq id -> (job, candidate index)
        self._reserve: tuple[int, int] | None = None  # (rows, columns) reserved at start, kept on a reset

    # -- the cache ---------------------------------------------------------------------------------------
    def reserve(self, rows: int, max_kv_bytes: int) -> None:
        """Give a cache that can reserve its full size up front (kv_ragged.py) the whole batch at the whole
        context, when that fits the KV budget, so that no step grows or re-lays it out."""
        reserve = getattr(self.cache, "reserve", None)
        cap = self.info.context_length + 1
        if reserve is not None and self.cache.rows == 0 and rows * cap * self.info.kv_bytes_per_token <= max_kv_bytes // 2:
            reserve(rows, cap)
            self._reserve = (rows, cap)

    def reset(self) -> None:
        """Start clean after an internal error: a new cache (with the start-up reservation) and no rows."""
        self.cache = self.runner.new_cache()
        reserve = getattr(self.cache, "reserve", None)
        if self._reserve is not None and reserve is not None:
            reserve(*self._reserve)
        self.row_seq = []
        self.seq_job.clear()

    def clear(self) -> None:
        self.cache.clear()
        self.row_seq.clear()

    def bind(self, job: TextJob) -> None:
        """The job's candidates are about to get rows: map their sequence ids to it."""
        for s in job.group.seqs:
            self.seq_job[s.seq_id] = (job, s.index)

    def forget(self, job: TextJob) -> None:
        for s in job.group.seqs:
            self.seq_job.pop(s.seq_id, None)

    def append(self, block: KVBlock, seq_ids: list[int]) -> None:
        """Rows for ``seq_ids`` from row 0 of ``block`` (candidates of a job share its prompt's row)."""
        self.cache.append(block, [0] * len(seq_ids))
        self.row_seq.extend(seq_ids)

    def remove_rows(self, seq_ids: Sequence[int]) -> None:
        index = {sid: r for r, sid in enumerate(self.row_seq)}
        rows = [index[s] for s in seq_ids if s in index]
        if not rows:
            return
        if len(rows) == len(self.row_seq):
            self.cache.clear()
            self.row_seq = []
            return
        order = self.cache.remove(rows)
        self.row_seq = [self.row_seq[i] for i in order]

    # -- decode ------------------------------------------------------------------------------------------
    def decode(self, padded: set[int]) -> tuple[list[int], list[tuple[TextJob, int]], np.ndarray]:
        """One decode step for every row: (the live rows' sequence ids, their candidates, their logits).
        Static padding rows are computed and left out, as are rows of jobs that failed."""
        pad = self.info.pad_token_id
        ids = np.array([[pad if sid in padded else self._last_token(sid)] for sid in self.row_seq], np.int64)  # [rows,1]
        rows = len(self.row_seq)
        try:
            logits = self.runner.decode(self.cache, ids)
        except Exception as e:
            logits = self._decode_solo(ids, e)
        self.stats.decode_calls += 1
        self.stats.decode_rows += rows
        live = [r for r, sid in enumerate(self.row_seq) if sid not in padded and sid in self.seq_job]
        live = [r for r in live if self.seq_job[self.row_seq[r]][0].error is None]
        self.stats.useful_rows += len(live)
        seqs = [self.row_seq[r] for r in live]
        return seqs, [self.seq_job[s] for s in seqs], logits if len(live) == rows else logits[live]

    def _decode_solo(self, ids: np.ndarray, error: Exception) -> np.ndarray:
        """The batch step raised: run each row alone (up to max_attempts) and rebuild the cache from the
        rows that succeeded; jobs whose rows keep failing end with engine_error."""
        log.warning("%s: decode of %d rows failed (%s); retrying each job alone", self.name, len(self.row_seq), error)
        survivors: list[tuple[int, KVCache, np.ndarray]] = []
        failed: dict[str, tuple[TextJob, str]] = {}
        for r, sid in enumerate(self.row_seq):
            job = self.seq_job.get(sid, (None, 0))[0]
            if job is not None and job.request.job_id in failed:
                continue
            block = self.cache.extract([r])
            last: Exception = error
            for _ in range(self.max_attempts):
                self.stats.retries += 1
                solo = self.runner.new_cache()
                solo.append(block, [0])
                try:
                    lg = self.runner.decode(solo, ids[r : r + 1])
                except Exception as e:
                    last = e
                    continue
                # A copy: runners hand back a view of a buffer that their next decode call overwrites.
                survivors.append((sid, solo, lg[0].copy()))
                break
            else:
                if job is not None:
                    failed[job.request.job_id] = (job, f"the runner failed on this job {self.max_attempts} times alone: {last}")
        # Rebuilt in the engine's own cache, which keeps its start-up reservation (a fresh cache would grow
        # and re-lay itself out during the rest of the run).
        self.cache.clear()
        kept: list[int] = []
        rows: list[np.ndarray] = []
        for sid, solo, lg in survivors:
            job = self.seq_job.get(sid, (None, 0))[0]
            if job is not None and job.request.job_id in failed:
                continue
            self.cache.append(solo.extract([0]), [0])
            kept.append(sid)
            rows.append(lg)
        self.row_seq = kept
        for job, msg in failed.values():
            self._fail(job, ErrorCode.engine_error, msg)
        return np.stack(rows) if rows else np.zeros((0, self.info.vocab_size), np.float32)

    def _last_token(self, seq_id: int) -> int:
        job, i = self.seq_job[seq_id]
        return job.group.seqs[i].output_token_ids[-1]

    # -- prefill -----------------------------------------------------------------------------------------
    def at_hand(self, job: TextJob) -> bool:
        """Whether the job's prefill result needs no call: run ahead already, or in the prompt cache."""
        return job.prefilled is not None or job.key in self.prompts

    def lookup(self, jobs: list[TextJob]) -> tuple[dict[str, Prefilled], list[TextJob]]:
        """(results at hand by job id, the jobs that need a call)."""
        done: dict[str, Prefilled] = {}
        for job in jobs:
            hit = job.prefilled
            if hit is None and (hit := self.prompts.get(job.key)) is not None:
                self.stats.prompt_cache_hits += 1
                job.prompt_cached = True
            if hit is not None:
                done[job.request.job_id] = hit
                job.prefilled = None
        return done, [j for j in jobs if j.request.job_id not in done]

    def prefill(self, todo: list[TextJob], ahead: list[TextJob], done: dict[str, Prefilled]) -> None:
        """One call for the prompts of ``todo`` (into ``done``) and of ``ahead`` (held by those waiting jobs);
        if it raises, each job of ``todo`` is retried alone."""
        try:
            ran = self._run_distinct([*todo, *ahead])
            for job in todo:
                done[job.request.job_id] = ran[job.key]
            for job in ahead:
                job.prefilled = ran[job.key]
            self.stats.prefill_ahead_rows += len(ahead)
        except Exception as e:
            # The jobs of ``ahead`` stay waiting, and are not run ahead again: if one of them is what breaks
            # the call, it then fails in its own call instead of in its neighbours' calls.
            for job in ahead:
                job.group.run_ahead = False
            log.warning("%s: prefill of %d jobs failed (%s); retrying each alone", self.name, len(todo), e)
            for job in todo:
                last: Exception = e
                for _ in range(self.max_attempts):
                    self.stats.retries += 1
                    try:
                        done[job.request.job_id] = self._run_distinct([job])[job.key]
                    except Exception as e2:
                        last = e2
                        continue
                    break
                else:
                    self._fail(job, ErrorCode.engine_error, f"the runner failed on this job {self.max_attempts} times alone: {last}")

    def _run_distinct(self, jobs: list[TextJob]) -> dict[tuple[int, ...], Prefilled]:
        """One prefill call for the distinct prompts of ``jobs`` (identical prompts run once: their rows
        would be identical); each result also goes into the prompt cache."""
        keys = list(dict.fromkeys(j.key for j in jobs))
        ids, mask, pos = prefill_inputs([list(k) for k in keys], self.info.pad_token_id)
        self.stats.prefill_calls += 1
        self.stats.prefill_tokens += int(ids.size)
        logits, block = self.runner.prefill(ids, mask, pos)
        self.stats.prefill_rows_shared += len(jobs) - len(keys)
        out: dict[tuple[int, ...], Prefilled] = {}
        for i, key in enumerate(keys):
            out[key] = Prefilled.take(logits, block, i)
            self.prompts.put(key, out[key])
        return out
