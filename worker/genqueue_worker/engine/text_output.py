"""Text output processing: sampling each row's token, accepting it, stop strings, incremental text, results.

The engine hands every row it computed in a step (decode rows and the first token of newly admitted
candidates) to :meth:`OutputProcessor.accept`, which samples, records the token in the job's sampling state,
and ends a candidate whose decoded text reached a stop string (``ended``; the scheduler applies it). A job's
result is built once, by :meth:`OutputProcessor.result`, when the scheduler says it finished.

Failure isolation (invariant 3): NaN/Inf logits fail that job with ``nan_output``, a detokenizing error
with ``postprocess_error``; the other jobs of the step carry on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from genqueue_worker.engine.detok import IncrementalText
from genqueue_worker.engine.prompt_cache import Prefilled
from genqueue_worker.engine.runner import TextModelInfo
from genqueue_worker.engine.sampling import SamplingState, StopMatcher, sample_rows
from genqueue_worker.engine.scheduler import FinishReason, SequenceGroup
from genqueue_worker.engine.types import ErrorCode, JobResult, TextRequest


def storable(text: str) -> str:
    # A byte-level vocabulary can emit the NUL byte, which PostgreSQL cannot store in text or JSONB: it
    # becomes U+FFFD (the replacement character) on every backend, so that outputs do not differ by store.
    return text.replace("\x00", "\ufffd")


@dataclass(eq=False)
class TextJob:
    """Engine-side state of one text job (owned by the loop thread once submitted)."""

    request: TextRequest  # as submitted
    future: Future[JobResult]  # resolved once, by the engine loop's _settle
    prompt_ids: list[int]  # what is prefilled (BOS for an empty prompt)
    group: SequenceGroup  # the scheduler's view of the job
    states: list[SamplingState]  # one per candidate
    stops: list[StopMatcher]  # one per candidate
    texts: list[IncrementalText]  # one per candidate: its text so far, kept only for stop strings
    cut_texts: dict[int, str] = field(default_factory=dict)  # candidate -> text cut before its stop string
    submitted: float = 0.0  # perf_counter at submit
    admitted: float = 0.0  # perf_counter when its prefill step began
    error: tuple[ErrorCode, str] | None = None  # set when the job failed
    prefilled: Prefilled | None = None  # its prompt already ran in an earlier prefill call (still waiting)
    prompt_cached: bool = False  # its prefill came from the prompt cache (reported in its metrics)

    @cached_property
    def key(self) -> tuple[int, ...]:
        """What the prompt cache and a call's de-duplication match on: the prompt's token ids (built once: the
        scheduler asks for it on every step a job waits at the head of the queue)."""
        return tuple(self.prompt_ids)


Fail = Callable[[TextJob, ErrorCode, str], None]


class OutputProcessor:
    """Turns a step's logits into accepted tokens and finished jobs into results (loop thread only)."""

    def __init__(self, tokenizer: Any, info: TextModelInfo, fail: Fail, return_token_ids: bool = False) -> None:
        self.tokenizer = tokenizer
        self.info = info
        self._fail = fail  # ends a job now (the engine's: scheduler, bookkeeping, its future)
        self.return_token_ids = return_token_ids  # add output["token_ids"] (generated ids, EOS excluded)

    def new_texts(self, n: int) -> list[IncrementalText]:
        return [IncrementalText(self.decode_raw, storable) for _ in range(n)]

    def accept_prefill(self, results: Sequence[tuple[TextJob, Prefilled]], sampled: dict[int, int],
                       ended: dict[int, FinishReason]) -> None:
        """The first token of every admitted candidate: one sampler call for them all (candidates of a job
        share its prompt's logits)."""
        if not results:
            return
        rows = np.concatenate([np.repeat(p.logits[None, :], job.group.n, axis=0) for job, p in results])
        seqs = [s.seq_id for job, _ in results for s in job.group.seqs]
        cands = [(job, s.index) for job, _ in results for s in job.group.seqs]
        self.accept(seqs, cands, rows, sampled, ended)

    def accept(self, seqs: list[int], cands: list[tuple[TextJob, int]], logits: np.ndarray,
               sampled: dict[int, int], ended: dict[int, FinishReason]) -> None:
        """Sample row r of ``logits`` for candidate ``cands[r]`` (sequence ``seqs[r]``) and accept it: into
        ``sampled``, and into ``ended`` when a stop string matched."""
        tokens, ok = sample_rows(logits, [job.states[i] for job, i in cands])
        eos = self.info.eos_token_id
        for sid, (job, i), tok, good in zip(seqs, cands, tokens.tolist(), ok.tolist(), strict=True):
            if job.error is not None:
                continue
            if not good:
                self._fail(job, ErrorCode.nan_output, "the model produced NaN/Inf logits for this job")
                continue
            sampled[sid] = tok
            job.states[i].observe(tok)
            matcher = job.stops[i]
            if not matcher.stops or (tok == eos and not job.request.params.ignore_eos):
                continue
            text = job.texts[i]
            try:
                grew = text.add(job.group.seqs[i].output_token_ids, tok)
            except Exception as e:
                self._fail(job, ErrorCode.postprocess_error, f"detokenizing failed: {e}")
                continue
            seen = text.text + text.pending
            cut = matcher.find(seen) if grew or text.pending else -1
            if cut >= 0:
                job.cut_texts[i] = seen[:cut]
                ended[sid] = FinishReason.stop

    def decode_raw(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def decode_text(self, ids: list[int]) -> str:
        return storable(self.decode_raw(ids))

    def result(self, job: TextJob, status: str) -> JobResult:
        now = time.perf_counter()
        g = job.group
        metrics: dict[str, float] = {
            "inference_ms": (now - job.admitted) * 1000 if job.admitted else 0.0,
            "wait_ms": ((job.admitted or now) - job.submitted) * 1000,
            "batch_size": g.mean_batch_size,
            "tokens": float(sum(len(s.output_token_ids) - (s.finish_reason is FinishReason.eos) for s in g.seqs)),
            "prompt_tokens": float(len(job.prompt_ids)),
            "prompt_cached": float(job.prompt_cached),
        }
        if status == "failed" and job.error is not None:
            code, msg = job.error
            return JobResult(job.request.job_id, "failed", error_code=code, error_message=msg, metrics=metrics)
        if status == "canceled":
            return JobResult(job.request.job_id, "canceled", metrics=metrics)
        texts: list[str] = []
        reasons: list[str] = []
        token_ids: list[list[int]] = []
        eos = self.info.eos_token_id
        try:
            for s in g.seqs:
                ids = s.output_token_ids
                if s.finish_reason is FinishReason.eos and ids and ids[-1] == eos:
                    ids = ids[:-1]
                token_ids.append(ids)
                texts.append(job.cut_texts[s.index] if s.index in job.cut_texts else self.decode_text(ids))
                reasons.append(str(s.finish_reason or FinishReason.length))
        except Exception as e:
            job.error = (ErrorCode.postprocess_error, f"detokenizing failed: {e}")
            return JobResult(job.request.job_id, "failed", error_code=ErrorCode.postprocess_error, error_message=job.error[1], metrics=metrics)
        output: dict[str, Any] = {"texts": texts, "finish_reasons": reasons}
        if self.return_token_ids:
            output["token_ids"] = token_ids
        return JobResult(job.request.job_id, "succeeded", output=output, metrics=metrics)
