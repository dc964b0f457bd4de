"""Iteration-level scheduler for text generation: every batching decision is made here; the engine runs it.

A pure class in the style of vLLM's v1 ``Scheduler``: no onnxruntime, no threads, no clocks. The engine calls
``schedule()`` once per step, runs what it says (prefill for newly admitted jobs, one decode step for the
running rows), samples, and reports the sampled tokens back with ``update_from_output``. In the same step it
asks ``refill()`` whether rows that just finished free slots for waiting jobs, and ``prefill_ahead()`` which
waiting prompts to run inside an admission's prefill call. Tests drive it with fake outputs.

Continuous batching (docs/design.md, "Benchmark definitions"): a job is admitted as soon as budgets allow,
joins the decode batch on the step after its prefill, and its rows leave the batch the moment they finish, so
later steps spend no compute on them. The request-level ("static") baseline of the benchmarks is a subclass
in bench/static_scheduler.py; the engine takes either through :class:`BatchScheduler`.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol


class SeqStatus(StrEnum):
    waiting = "waiting"  # in the admission queue, no KV cache yet
    running = "running"  # has a row in the batch and produces tokens
    finished = "finished"  # done; in static batching the row may still sit in the batch as padding


class FinishReason(StrEnum):
    eos = "eos"  # the model produced the end-of-sequence token
    stop = "stop"  # a stop string matched (decided by the engine on decoded text)
    length = "length"  # max_new_tokens (already clamped to the context left) reached
    canceled = "canceled"  # the job was canceled between steps
    failed = "failed"  # the job failed (error code kept on the engine side)


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 32  # rows in the decode batch at most (static padding rows included)
    max_tokens_per_step: int = 4096  # prompt tokens prefilled + rows decoded in one step
    max_kv_bytes: int = 2 << 30  # KV memory budget for the padded batch (rows x longest final length)
    kv_bytes_per_token: int = 0  # 2 (k and v) x layers x heads x head_dim x dtype size; 0 disables the check
    # A prefill call also runs the prompts of up to this many waiting jobs, which then join the batch later
    # without a call of their own (0 = off); see prefill_ahead.
    prefill_ahead: int = 0


@dataclass(eq=False)
class Sequence:
    seq_id: int  # unique within the scheduler; identifies one batch row
    group: SequenceGroup  # the job this candidate belongs to
    index: int  # candidate index within the job (0..n-1); result texts are in this order
    output_token_ids: list[int] = field(default_factory=list)  # sampled tokens, the EOS included if any
    status: SeqStatus = SeqStatus.waiting  # lifecycle, see SeqStatus
    finish_reason: FinishReason | None = None  # set once finished

    @property
    def num_tokens(self) -> int:
        """Tokens this row holds once its newest token is fed: prompt plus generated."""
        return self.group.prompt_len + len(self.output_token_ids)


@dataclass(eq=False)
class SequenceGroup:
    """One job: ``n`` candidate sequences that share a prompt (and its prefill)."""

    group_id: str  # the job id
    prompt_len: int  # prompt tokens (>= 1: an empty prompt is fed as BOS)
    max_new_tokens: int  # per candidate, already clamped to the context left after the prompt
    n: int = 1  # candidates
    priority: int = 5  # 0 is highest
    eos_token_id: int | None = None  # None disables EOS stopping (a request's ignore_eos)
    seqs: list[Sequence] = field(default_factory=list)  # filled by Scheduler.add, in candidate order
    arrival: int = -1  # admission tie-breaker, set by Scheduler.add
    admitted_step: int = -1  # the step whose prefill ran it; -1 while waiting
    finished_step: int = -1  # the step that finished its last candidate
    steps: int = 0  # forward passes it took part in (its prefill included)
    rows_sum: int = 0  # sum over those passes of the rows in the pass; rows_sum/steps = mean batch size
    run_ahead: bool = True  # False once a call that ran its prompt ahead failed: it then waits for its own call

    @property
    def is_finished(self) -> bool:
        return all(s.status is SeqStatus.finished for s in self.seqs)

    @property
    def final_len(self) -> int:
        """The longest a row of this job can get: what the KV budget reserves."""
        return self.prompt_len + self.max_new_tokens

    @property
    def mean_batch_size(self) -> float:
        return self.rows_sum / self.steps if self.steps else 0.0


@dataclass
class SchedulerOutput:
    step: int  # step counter, starting at 0
    prefill: list[SequenceGroup]  # admitted now: prefill once per group, sample the first token of each candidate
    decode: list[int]  # seq ids of rows that run one decode step now (static padding rows included)
    padded: set[int]  # subset of ``decode``: finished rows kept by static batching; computed, output ignored
    removed: list[int]  # seq ids whose rows leave the batch before this step's decode (drop their KV rows)
    num_tokens: int  # tokens computed this step: prompt tokens of ``prefill`` + len(decode)


def choose_ahead(todo_lens: Seq[int], candidates: Seq[int], held: int, budget: int) -> int:
    """How many of ``candidates`` (the prompt lengths of the next waiting jobs not prefilled yet, in admission
    order) to prefill along with the admitted prompts ``todo_lens``: as many as keep both the call's padded
    size (rows x longest prompt) and the prompt tokens held outside the batch (``held`` plus theirs) within
    ``budget`` (the per-step token budget). The first that does not fit ends the run, as admission does."""
    rows, width, n = len(todo_lens), max(todo_lens), 0
    for length in candidates:
        wider = max(width, length)
        if (rows + 1) * wider > budget or held + length > budget:
            break
        rows, width, held, n = rows + 1, wider, held + length, n + 1
    return n


class BatchScheduler(Protocol):
    """What the text engine asks of a scheduler (:class:`Scheduler`, or the benchmarks' static baseline)."""

    def add(self, group: SequenceGroup) -> None: ...

    def has_work(self) -> bool: ...

    def has_row(self, seq_id: int) -> bool: ...

    def schedule(self) -> SchedulerOutput: ...

    def refill(self) -> SchedulerOutput | None: ...

    def prefill_ahead(self, todo: Seq[SequenceGroup], held: int) -> list[SequenceGroup]: ...

    def update_from_output(
        self, out: SchedulerOutput, sampled: Mapping[int, int], finished: Mapping[int, FinishReason] | None = None
    ) -> list[SequenceGroup]: ...

    def finish_group(self, group_id: str, reason: FinishReason) -> SequenceGroup | None: ...

    def abort_all(self, reason: FinishReason) -> list[SequenceGroup]: ...


Prefilled = Callable[[SequenceGroup], bool]
SchedulerFactory = Callable[[SchedulerConfig, Prefilled], BatchScheduler]


class Scheduler:
    def __init__(self, config: SchedulerConfig | None = None, prefilled: Prefilled | None = None) -> None:
        """``prefilled``: whether the engine already holds a group's prefill result (run ahead, or in the
        prompt cache); such a group costs the step's token budget nothing when it is admitted."""
        self.config = config or SchedulerConfig()
        self._prefilled = prefilled or (lambda g: False)
        self._waiting: list[tuple[int, int, SequenceGroup]] = []  # heap of (priority, arrival, group)
        self._running: dict[int, Sequence] = {}  # seq id -> sequence that has a row in the batch
        self._groups: dict[str, SequenceGroup] = {}  # unfinished groups, waiting or running
        self._pending_removed: list[int] = []  # rows finished since the last schedule()
        self._arrivals = itertools.count()
        self._seq_ids = itertools.count()
        self._step = 0

    # -- queries ---------------------------------------------------------------------------------------
    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_rows(self) -> int:
        """Rows in the batch, static padding rows included."""
        return len(self._running)

    def has_work(self) -> bool:
        return bool(self._waiting or self._running or self._pending_removed)

    def has_row(self, seq_id: int) -> bool:
        """Whether the sequence occupies a batch row (running, or finished but kept by static batching)."""
        return seq_id in self._running

    def peek_waiting(self, k: int) -> list[SequenceGroup]:
        """The next ``k`` waiting groups in admission order, without admitting them."""
        return [e[2] for e in heapq.nsmallest(k, self._waiting)]

    def kv_bytes(self, rows: int, length: int) -> int:
        return rows * length * self.config.kv_bytes_per_token

    # -- input -----------------------------------------------------------------------------------------
    def add(self, group: SequenceGroup) -> None:
        if group.group_id in self._groups:
            raise ValueError(f"duplicate group id {group.group_id!r}")
        if group.n < 1 or group.max_new_tokens < 1 or group.prompt_len < 1:
            raise ValueError(f"group {group.group_id!r}: n, max_new_tokens and prompt_len must be >= 1")
        group.arrival = next(self._arrivals)
        group.seqs = [Sequence(next(self._seq_ids), group, i) for i in range(group.n)]
        self._groups[group.group_id] = group
        heapq.heappush(self._waiting, (group.priority, group.arrival, group))

    # -- the step --------------------------------------------------------------------------------------
    def prefill_cost(self, g: SequenceGroup) -> int:
        """Prompt tokens that admitting ``g`` computes: none when its prefill result is at hand."""
        return 0 if self._prefilled(g) else g.prompt_len

    def schedule(self) -> SchedulerOutput:
        removed, self._pending_removed = self._pending_removed, []
        return self._output(removed, admit=True)

    def refill(self) -> SchedulerOutput | None:
        """A second, prefill-only output for the step that ``schedule()`` began, or None: slots freed by rows
        that finished in this step take waiting jobs now instead of at the next step. A slot then never idles
        across a step boundary, which saves one step per job that follows another in the same slot."""
        if not self._waiting or len(self._running) >= self.config.max_num_seqs:
            return None
        out = self.schedule()
        if not (out.prefill or out.removed):
            return None
        return replace(out, decode=[], padded=set())

    def prefill_ahead(self, todo: Seq[SequenceGroup], held: int) -> list[SequenceGroup]:
        """Waiting groups to prefill along with ``todo`` (the admitted groups that need a call): the next ones
        in admission order whose prompt is not at hand and may run ahead, as many as :func:`choose_ahead`
        allows. ``held``: prompt tokens already held for waiting groups, so that they stay within
        ``max_tokens_per_step`` even when higher-priority arrivals keep jumping ahead of groups prefilled
        earlier.

        Prefill-ahead: a joining job would otherwise cost one more ORT call in a step that has a decode call
        already (0.49 ms for one 12-token tiny-lm prompt against 2.1 ms for nine 15-token ones, ``python -m
        bench.prefill``). Running the next waiting prompts in this call turns about prefill_ahead+1 such calls
        into one (76 -> 11 on the calibration workload). A prompt's logits and KV do not depend on which
        prompts share its call (invariant 4), so running it early does not change its tokens."""
        cfg = self.config
        if cfg.prefill_ahead <= 0 or not todo:
            return []
        candidates = [g for g in self.peek_waiting(cfg.prefill_ahead) if g.run_ahead and not self._prefilled(g)]
        n = choose_ahead([g.prompt_len for g in todo], [g.prompt_len for g in candidates], held, cfg.max_tokens_per_step)
        return candidates[:n]

    def _output(self, removed: list[int], admit: bool) -> SchedulerOutput:
        decode = list(self._running)
        padded = {sid for sid, s in self._running.items() if s.status is SeqStatus.finished}
        num_tokens = len(decode)
        prefill: list[SequenceGroup] = []
        if admit:
            prefill, num_tokens = self._admit(num_tokens)
        for g in prefill:
            g.admitted_step = self._step
            for s in g.seqs:
                s.status = SeqStatus.running
        out = SchedulerOutput(self._step, prefill, decode, padded, removed, num_tokens)
        self._step += 1
        return out

    def _admit(self, num_tokens: int) -> tuple[list[SequenceGroup], int]:
        """Pop waiting groups in (priority, arrival) order while every budget holds.

        Strict order: the first group that does not fit stops admission, so a large job is not starved by
        a stream of small ones. A group that could never fit is admitted alone into an empty batch, since
        refusing it would block the queue forever (the engine checks hard limits before it gets here).
        """
        cfg = self.config
        admitted: list[SequenceGroup] = []
        rows = len(self._running)
        longest = max((s.group.final_len for s in self._running.values()), default=0)
        while self._waiting:
            g = self._waiting[0][2]
            new_rows = rows + g.n
            new_longest = max(longest, g.final_len)
            cost = self.prefill_cost(g)
            fits = (
                new_rows <= cfg.max_num_seqs
                and num_tokens + cost <= cfg.max_tokens_per_step
                and (cfg.kv_bytes_per_token == 0 or self.kv_bytes(new_rows, new_longest) <= cfg.max_kv_bytes)
            )
            if not fits and (rows > 0 or admitted):
                break
            heapq.heappop(self._waiting)
            admitted.append(g)
            rows, longest, num_tokens = new_rows, new_longest, num_tokens + cost
            for s in g.seqs:
                self._running[s.seq_id] = s
        return admitted, num_tokens

    def update_from_output(
        self,
        out: SchedulerOutput,
        sampled: Mapping[int, int],
        finished: Mapping[int, FinishReason] | None = None,
    ) -> list[SequenceGroup]:
        """Record one token per sampled row; return the groups that finished with it.

        ``sampled``: seq id -> token, for the rows of ``out.decode`` (padding rows excluded) and the
        candidates of ``out.prefill``. ``finished``: rows the engine ended itself (a stop string matched,
        or the job failed); those win over EOS/length.
        """
        finished = finished or {}
        rows = len(out.decode)
        for g in self._groups_in(out):
            g.steps += 1
            # A prefill computes one row per group (candidates share it).
            g.rows_sum += rows if g.admitted_step != out.step else len(out.prefill)
        done: list[SequenceGroup] = []
        for seq_id, token in sampled.items():
            seq = self._running.get(seq_id)
            if seq is None or seq.status is not SeqStatus.running:
                continue  # canceled or failed between the step and now
            seq.output_token_ids.append(int(token))
            g = seq.group
            reason = finished.get(seq_id)
            if reason is None and g.eos_token_id is not None and token == g.eos_token_id:
                reason = FinishReason.eos
            if reason is None and len(seq.output_token_ids) >= g.max_new_tokens:
                reason = FinishReason.length
            if reason is not None and self._finish_seq(seq, reason, out.step):
                done.append(g)
        for seq_id, reason in finished.items():
            seq = self._running.get(seq_id)
            ended_now = seq is not None and seq_id not in sampled and seq.status is SeqStatus.running
            if ended_now and seq is not None and self._finish_seq(seq, reason, out.step):
                done.append(seq.group)
        return done

    def _groups_in(self, out: SchedulerOutput) -> Iterable[SequenceGroup]:
        seen: dict[str, SequenceGroup] = {}
        for sid in out.decode:
            s = self._running.get(sid)
            if s is not None and s.status is SeqStatus.running:
                seen.setdefault(s.group.group_id, s.group)
        for g in out.prefill:
            seen.setdefault(g.group_id, g)
        return seen.values()

    # -- ending sequences ------------------------------------------------------------------------------
    def finish_group(self, group_id: str, reason: FinishReason) -> SequenceGroup | None:
        """End a whole job, waiting or running (cancel, nan_output, engine_error). None if unknown/done."""
        g = self._groups.get(group_id)
        if g is None:
            return None
        if g.admitted_step < 0:
            self._waiting = [e for e in self._waiting if e[2] is not g]
            heapq.heapify(self._waiting)
        for s in g.seqs:
            if s.status is not SeqStatus.finished:
                if s.status is SeqStatus.waiting:
                    s.status, s.finish_reason = SeqStatus.finished, reason
                else:
                    self._finish_seq(s, reason, self._step)
        g.finished_step = self._step
        self._groups.pop(group_id, None)
        return g

    def _finish_seq(self, seq: Sequence, reason: FinishReason, step: int) -> bool:
        seq.status, seq.finish_reason = SeqStatus.finished, reason
        self._release_row(seq)
        g = seq.group
        if g.is_finished and g.group_id in self._groups:
            g.finished_step = step
            del self._groups[g.group_id]
            return True
        return False

    def _release_row(self, seq: Sequence) -> None:
        """A finished row leaves the batch at the next ``schedule()``."""
        if seq.seq_id in self._running:
            del self._running[seq.seq_id]
            self._pending_removed.append(seq.seq_id)

    def abort_all(self, reason: FinishReason) -> list[SequenceGroup]:
        """End everything (engine shutdown); returns the groups that were unfinished."""
        groups = list(self._groups.values())
        for g in groups:
            self.finish_group(g.group_id, reason)
        self._waiting.clear()
        self._running.clear()
        self._pending_removed.clear()
        return groups
