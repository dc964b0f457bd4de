"""Scheduler unit tests: fed with fake runner outputs (tokens), no onnxruntime."""

from __future__ import annotations

from bench.engine_benchmarks import POLICIES
from bench.static_scheduler import StaticScheduler
from genqueue_worker.engine.scheduler import FinishReason, Scheduler, SchedulerConfig, SequenceGroup

EOS = 0


def group(gid: str, prompt: int = 4, max_new: int = 4, n: int = 1, priority: int = 5, eos: int | None = EOS) -> SequenceGroup:
    return SequenceGroup(gid, prompt, max_new, n=n, priority=priority, eos_token_id=eos)


def run_step(s: Scheduler, token_for=lambda seq: 7, ended=None):
    """One step with a fake runner: every decoded row and every admitted candidate samples ``token_for``."""
    out = s.schedule()
    sampled = {sid: token_for(sid) for sid in out.decode if sid not in out.padded}
    for g in out.prefill:
        for seq in g.seqs:
            sampled[seq.seq_id] = token_for(seq.seq_id)
    done = s.update_from_output(out, sampled, ended)
    return out, done


def test_admission_by_priority_then_arrival() -> None:
    s = Scheduler(SchedulerConfig(max_num_seqs=2))
    for gid, prio in [("a", 5), ("b", 1), ("c", 5), ("d", 0)]:
        s.add(group(gid, priority=prio))
    out = s.schedule()
    assert [g.group_id for g in out.prefill] == ["d", "b"]
    s.finish_group("d", FinishReason.canceled)
    s.finish_group("b", FinishReason.canceled)
    out = s.schedule()
    assert [g.group_id for g in out.prefill] == ["a", "c"]  # same priority: arrival order


def test_peek_waiting_shows_the_admission_order_without_admitting() -> None:
    s = Scheduler(SchedulerConfig(max_num_seqs=1))
    for gid, prio in [("a", 5), ("b", 1), ("c", 5), ("d", 0)]:
        s.add(group(gid, priority=prio))
    assert [g.group_id for g in s.peek_waiting(3)] == ["d", "b", "a"]
    assert s.num_waiting == 4
    out = s.schedule()
    assert [g.group_id for g in out.prefill] == ["d"]
    assert [g.group_id for g in s.peek_waiting(5)] == ["b", "a", "c"]


def test_budget_max_seqs_counts_candidates() -> None:
    s = Scheduler(SchedulerConfig(max_num_seqs=4))
    s.add(group("a", n=3))
    s.add(group("b", n=2))
    out = s.schedule()
    assert [g.group_id for g in out.prefill] == ["a"]  # b's 2 rows would make 5 > 4
    assert s.num_rows == 3 and s.num_waiting == 1


def test_budget_tokens_per_step_counts_prefill_tokens_and_decode_rows() -> None:
    s = Scheduler(SchedulerConfig(max_num_seqs=8, max_tokens_per_step=10))
    s.add(group("a", prompt=6, max_new=10))
    s.add(group("b", prompt=6, max_new=10))
    out, _ = run_step(s)
    assert [g.group_id for g in out.prefill] == ["a"] and out.num_tokens == 6
    out, _ = run_step(s)  # 1 decode row + 6 prompt tokens = 7 <= 10
    assert [g.group_id for g in out.prefill] == ["b"] and out.num_tokens == 7


def test_prompts_whose_prefill_is_at_hand_cost_no_prefill_tokens() -> None:
    # The engine says which prompts it already holds (run ahead or cached): those cost the step nothing.
    held = {"b", "c"}
    s = Scheduler(SchedulerConfig(max_num_seqs=8, max_tokens_per_step=10), prefilled=lambda g: g.group_id in held)
    for gid in "abcd":
        s.add(group(gid, prompt=6, max_new=10))
    out, _ = run_step(s)
    assert [g.group_id for g in out.prefill] == ["a", "b", "c"] and out.num_tokens == 6  # d: 6 + 6 > 10
    out, _ = run_step(s)  # 3 decode rows + 6 prompt tokens
    assert [g.group_id for g in out.prefill] == ["d"] and out.num_tokens == 9


def test_budget_kv_bytes() -> None:
    # 1 byte per token: rows x longest final length must stay <= 20.
    s = Scheduler(SchedulerConfig(max_num_seqs=8, max_kv_bytes=20, kv_bytes_per_token=1))
    s.add(group("a", prompt=4, max_new=6))  # final 10
    s.add(group("b", prompt=4, max_new=6))  # 2 rows x 10 = 20: fits
    s.add(group("c", prompt=2, max_new=2))  # 3 rows x 10 = 30: does not
    out = s.schedule()
    assert [g.group_id for g in out.prefill] == ["a", "b"]
    assert s.kv_bytes(3, 10) == 30


def test_oversized_group_is_admitted_alone_into_an_empty_batch() -> None:
    s = Scheduler(SchedulerConfig(max_tokens_per_step=5))
    s.add(group("big", prompt=50))
    s.add(group("small", prompt=2))
    out = s.schedule()
    assert [g.group_id for g in out.prefill] == ["big"]  # no deadlock on a job larger than the budget


def test_join_after_prefill_and_leave_at_length() -> None:
    s = Scheduler(SchedulerConfig(max_num_seqs=4))
    s.add(group("a", max_new=2))
    out, done = run_step(s)  # prefill a: token 1 of 2
    a_seq = out.prefill[0].seqs[0].seq_id
    assert out.decode == [] and not done
    s.add(group("b", max_new=3))
    out, done = run_step(s)  # a decodes (token 2: length), b prefills
    assert out.decode == [a_seq] and [g.group_id for g in out.prefill] == ["b"]
    assert [g.group_id for g in done] == ["a"] and done[0].seqs[0].finish_reason is FinishReason.length
    out, _ = run_step(s)
    assert out.removed == [a_seq]  # a's row leaves before this step's decode
    assert a_seq not in out.decode and len(out.decode) == 1


def test_leave_at_eos_and_engine_reported_stop() -> None:
    s = Scheduler(SchedulerConfig())
    s.add(group("a", max_new=10))
    s.add(group("b", max_new=10))
    out, _ = run_step(s)
    a, b = (g.seqs[0].seq_id for g in out.prefill)
    out = s.schedule()
    done = s.update_from_output(out, {a: EOS, b: 5}, {b: FinishReason.stop})
    reasons = {g.group_id: g.seqs[0].finish_reason for g in done}
    assert reasons == {"a": FinishReason.eos, "b": FinishReason.stop}
    assert s.schedule().removed == [a, b] and not s.has_work()


def test_ignore_eos_when_group_has_no_eos() -> None:
    s = Scheduler(SchedulerConfig())
    s.add(group("a", max_new=3, eos=None))
    for _ in range(3):
        _, done = run_step(s, token_for=lambda sid: EOS)
    assert done and done[0].seqs[0].finish_reason is FinishReason.length
    assert len(done[0].seqs[0].output_token_ids) == 3


def test_cancel_running_and_waiting() -> None:
    s = Scheduler(SchedulerConfig(max_num_seqs=1))
    s.add(group("a", max_new=50))
    s.add(group("b", max_new=50))
    out, _ = run_step(s)
    a = out.prefill[0].seqs[0].seq_id
    g = s.finish_group("b", FinishReason.canceled)  # still waiting
    assert g is not None and s.num_waiting == 0
    g = s.finish_group("a", FinishReason.canceled)
    assert g is not None and g.seqs[0].finish_reason is FinishReason.canceled
    out = s.schedule()
    assert out.removed == [a] and out.decode == []
    assert s.finish_group("a", FinishReason.canceled) is None  # already over


def test_n_candidates_share_one_prefill_and_finish_together() -> None:
    s = Scheduler(SchedulerConfig())
    s.add(group("a", n=3, max_new=2))
    out, _ = run_step(s)
    assert len(out.prefill) == 1 and len(out.prefill[0].seqs) == 3
    out, done = run_step(s)
    assert len(out.decode) == 3 and [g.group_id for g in done] == ["a"]
    assert [x.index for x in done[0].seqs] == [0, 1, 2]


def test_continuous_spends_no_compute_on_finished_rows() -> None:
    s = Scheduler(SchedulerConfig(max_num_seqs=4))
    lengths = {"a": 2, "b": 5, "c": 3, "d": 8}
    for gid, n in lengths.items():
        s.add(group(gid, max_new=n, eos=None))
    rows = []
    while s.has_work():
        out, _ = run_step(s)
        rows.append(len(out.decode))
        assert not out.padded
    # Step t decodes exactly the jobs that still need tokens after their prefill at step 0.
    assert rows == [0, 4, 3, 2, 2, 1, 1, 1, 0]
    assert sum(rows) == sum(n - 1 for n in lengths.values())


def test_static_keeps_finished_rows_and_admits_only_into_an_empty_batch() -> None:
    s = StaticScheduler(SchedulerConfig(max_num_seqs=2))
    s.add(group("a", max_new=2, eos=None))
    s.add(group("b", max_new=4, eos=None))
    s.add(group("c", max_new=1, eos=None))
    finished_at: dict[str, int] = {}
    trace = []
    while s.has_work():
        out, done = run_step(s)
        trace.append(([g.group_id for g in out.prefill], len(out.decode), len(out.padded)))
        for g in done:
            finished_at[g.group_id] = out.step
    # a finishes at step 1 but its row stays (padded) until b, the longest, is done at step 3.
    assert trace[:4] == [(["a", "b"], 0, 0), ([], 2, 0), ([], 2, 1), ([], 2, 1)]
    assert trace[4][0] == ["c"]  # c waits for the whole batch to leave
    assert finished_at["a"] == 1 and finished_at["b"] == 3  # each job still reported when it finishes


def test_static_vs_continuous_rows_computed() -> None:
    def total_rows(policy: str) -> int:
        s = POLICIES[policy](SchedulerConfig(max_num_seqs=4), lambda g: False)
        for i, n in enumerate([2, 9, 3, 9, 4, 2, 8, 5]):
            s.add(group(f"j{i}", max_new=n, eos=None))
        total = 0
        while s.has_work():
            out, _ = run_step(s)
            total += len(out.decode)
        return total

    useful = sum(n - 1 for n in [2, 9, 3, 9, 4, 2, 8, 5])
    assert total_rows("continuous") == useful
    assert total_rows("static") > useful * 1.3


def test_abort_all() -> None:
    s = Scheduler(SchedulerConfig(max_num_seqs=1))
    s.add(group("a"))
    s.add(group("b"))
    run_step(s)
    assert {g.group_id for g in s.abort_all(FinishReason.failed)} == {"a", "b"}
    assert not s.has_work()


def test_refill_admits_into_slots_freed_in_this_step_without_decoding_again() -> None:
    s = Scheduler(SchedulerConfig(max_num_seqs=1))
    s.add(group("a", max_new=2, eos=None))
    s.add(group("b", max_new=2, eos=None))
    run_step(s)  # a prefills
    assert s.refill() is None  # the one slot is taken
    out, done = run_step(s)  # a's second token: a finishes, its slot frees
    assert [g.group_id for g in done] == ["a"]
    refill = s.refill()
    assert refill is not None and [g.group_id for g in refill.prefill] == ["b"]
    assert refill.decode == [] and not refill.padded and refill.removed == [out.decode[0]]
    assert s.refill() is None  # nothing waits any more


def test_prefill_ahead_picks_the_next_waiting_prompts_not_at_hand() -> None:
    held = {"c"}
    s = Scheduler(SchedulerConfig(max_num_seqs=1, max_tokens_per_step=40, prefill_ahead=3),
                  prefilled=lambda g: g.group_id in held)
    for gid in "abcde":
        s.add(group(gid, prompt=10))
    out = s.schedule()
    assert [g.group_id for g in out.prefill] == ["a"]
    ahead = s.prefill_ahead(out.prefill, held=0)
    assert [g.group_id for g in ahead] == ["b", "d"]  # c is at hand; e is past the 3 looked at
    assert [g.group_id for g in s.prefill_ahead(out.prefill, held=25)] == ["b"]  # 25 + 10 fits, 25 + 20 not
    ahead[0].run_ahead = False  # a call that ran b ahead failed: b waits for its own call
    assert [g.group_id for g in s.prefill_ahead(out.prefill, held=0)] == ["d"]
    assert Scheduler(SchedulerConfig(prefill_ahead=0)).prefill_ahead(out.prefill, held=0) == []
