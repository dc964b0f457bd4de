"""Text engine lanes (worker/genqueue_worker/engine/lanes.py) on the real model: where a job runs never changes its tokens,
and the engine API (submit, cancel, stop) behaves as with one loop."""

from __future__ import annotations

from typing import Any

from bench.engine_benchmarks import run_all
from genqueue_worker.engine import load_engine
from genqueue_worker.engine.lanes import LanedTextEngine
from genqueue_worker.engine.text_engine import TextEngine
from genqueue_worker.engine.types import JobResult, TextParams, TextRequest

PROMPTS = ["Once upon a time", "The cat", "1 2 3", "", "Hello, my name is"]


def jobs(k: int, max_new: int = 20) -> list[TextRequest]:
    return [
        TextRequest(f"j{i}", PROMPTS[i % len(PROMPTS)], TextParams(
            max_new_tokens=3 + (i * 7) % max_new, temperature=[0.0, 0.9][i % 2], seed=i, top_k=[0, 40][i % 3 == 0],
            n=1 + (i % 4 == 1), ignore_eos=True,
        ))
        for i in range(k)
    ]


def outputs(results: list[JobResult]) -> list[Any]:
    return [(r.job_id, r.status, r.output) for r in results]


def test_lanes_give_the_same_tokens_as_one_loop(models: dict[str, Any]) -> None:
    one = load_engine(models["text"], "cpu", max_batch_size=8)
    laned = load_engine(models["text"], "cpu", max_batch_size=8, lanes=2)
    assert isinstance(one, TextEngine) and isinstance(laned, LanedTextEngine)
    assert [lane.config.max_batch_size for lane in laned.lanes] == [4, 4]
    # The prompt cache's bytes are split like the other budgets: the lanes together hold what one loop would.
    assert [lane.prompts.max_bytes for lane in laned.lanes] == [one.prompts.max_bytes // 2] * 2
    assert laned.lanes[0].runner.session is laned.lanes[1].runner.session  # one copy of the weights
    reqs = jobs(20)
    got = run_all(laned, reqs)  # every lane's loop in a thread of its own
    assert outputs(got) == outputs(one.run_all(reqs))
    assert all(r.status == "succeeded" for r in got)
    assert all(lane.stats.useful_rows > 0 for lane in laned.lanes)  # both lanes did work
    assert laned.stats.useful_rows == sum(lane.stats.useful_rows for lane in laned.lanes)


def test_one_lane_or_one_row_is_a_plain_engine(models: dict[str, Any]) -> None:
    assert isinstance(load_engine(models["text"], "cpu", max_batch_size=8, lanes=1), TextEngine)
    assert isinstance(load_engine(models["text"], "cpu", max_batch_size=1, lanes=2), TextEngine)


def test_started_lanes_cancel_and_stop(models: dict[str, Any]) -> None:
    eng = load_engine(models["text"], "cpu", max_batch_size=4, lanes=2)
    assert isinstance(eng, LanedTextEngine)
    eng.start()
    try:
        long = [eng.submit(TextRequest(f"long{i}", "Once", TextParams(max_new_tokens=200, ignore_eos=True, seed=i)))
                for i in range(6)]
        short = eng.submit(TextRequest("short", "The cat", TextParams(max_new_tokens=3, ignore_eos=True)))
        dup = eng.submit(TextRequest("short", "The cat", TextParams(max_new_tokens=3, ignore_eos=True)))
        eng.cancel("long5")  # still queued in its lane behind long1 and long3 (two slots per lane)
        assert long[5].result(30).status == "canceled"
        assert short.result(30).status == "succeeded" and dup.result(30).output == short.result(30).output
    finally:
        eng.stop(drain=False, timeout=5)
    statuses = {f.result(5).status for f in long[:5]}
    assert statuses <= {"succeeded", "failed"}  # finished, or given back at the stop (shutdown)
    late = eng.submit(TextRequest("late", "x", TextParams(max_new_tokens=2)))
    assert late.result(5).status == "failed"  # a stopped engine refuses new work at once
