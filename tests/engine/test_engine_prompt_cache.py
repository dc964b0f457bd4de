"""The prompt cache (worker/genqueue_worker/engine/prompt_cache.py) and the de-duplication of identical prompts in a call."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench.engine_benchmarks import POLICIES
from genqueue_worker.engine.kv_cache import KVBlock
from genqueue_worker.engine.prompt_cache import Prefilled, PromptCache
from genqueue_worker.engine.text_engine import TextEngine, TextEngineConfig
from genqueue_worker.engine.types import ErrorCode, JobResult, TextParams, TextRequest
from tests.engine.fake_runners import FakeTextRunner


def engine(tok: Any, runner: FakeTextRunner | None = None, policy: str = "continuous", **cfg: Any) -> TextEngine:
    return TextEngine(runner=runner or FakeTextRunner(), tokenizer=tok, config=TextEngineConfig(**cfg),
                      scheduler=POLICIES[policy])


def req(job_id: str, prompt: str, seed: int = 1, n: int = 12) -> TextRequest:
    return TextRequest(job_id, prompt, TextParams(max_new_tokens=n, temperature=0.9, seed=seed, ignore_eos=True))


def out(r: JobResult) -> Any:
    return r.status, r.output


def prefill_rows(eng: TextEngine) -> list[int]:
    return [c.rows for c in eng.runner.calls if c.kind == "prefill"]  # type: ignore[attr-defined]


def entry(tokens: int, nan: bool = False) -> Prefilled:
    """A one-row entry of ``tokens`` tokens: 2 tensors of [1,1,tokens,2] float32 plus 4 logits."""
    logits = np.full(4, np.nan if nan else 0.5, np.float32)
    arrays = [np.zeros((1, 1, tokens, 2), np.float32) for _ in range(2)]
    return Prefilled(logits, KVBlock(arrays, np.array([tokens]), left_padded=False))


def test_a_repeated_prompt_comes_from_the_cache_with_the_same_tokens(byte_tokenizer: Any) -> None:
    fresh = engine(byte_tokenizer, prompt_cache_mb=0)
    want = {r.job_id: out(fresh.run_all([r])[0]) for r in (req("a", "hello"), req("b", "hello", seed=2))}
    eng = engine(byte_tokenizer)
    assert out(eng.run_all([req("a", "hello")])[0]) == want["a"]
    # Same prompt, another job with another seed: no call, its own tokens.
    assert out(eng.run_all([req("b", "hello", seed=2)])[0]) == want["b"]
    assert prefill_rows(eng) == [1]
    assert eng.stats.prompt_cache_hits == 1 and eng.prompts.hits == 1 and len(eng.prompts) == 1
    # Off: every job pays for its prompt.
    assert prefill_rows(fresh) == [1, 1] and fresh.stats.prompt_cache_hits == 0


def test_identical_prompts_in_one_call_run_once(byte_tokenizer: Any) -> None:
    reqs = [req(f"j{i}", ["same", "other"][i % 2], seed=i, n=4 + i) for i in range(6)]
    alone = {r.job_id: out(engine(byte_tokenizer).run_all([r])[0]) for r in reqs}
    # Even with the cache off, a call computes each distinct prompt once.
    eng = engine(byte_tokenizer, max_batch_size=8, prompt_cache_mb=0)
    assert {r.job_id: out(r) for r in eng.run_all(reqs)} == alone
    assert prefill_rows(eng) == [2]
    assert eng.stats.prefill_rows_shared == 4


def test_jobs_joining_midway_and_static_batches_reuse_cached_prompts(byte_tokenizer: Any) -> None:
    reqs = [req(f"j{i}", ["ab", "abc", "abcd"][i % 3], seed=i, n=3 + (i * 5) % 11) for i in range(12)]
    want = {r.job_id: out(r) for r in engine(byte_tokenizer, max_batch_size=2, prompt_cache_mb=0, prefill_ahead=0).run_all(reqs)}
    # Continuous: the first call runs the two admitted prompts and eight waiting ones (prefill-ahead), which
    # hold three distinct prompts; jobs 10 and 11 then find theirs in the cache.
    cont = engine(byte_tokenizer, max_batch_size=2)
    assert {r.job_id: out(r) for r in cont.run_all(reqs)} == want
    assert prefill_rows(cont) == [3] and cont.stats.prompt_cache_hits == 2
    # Static: batch 1 computes "ab" and "abc", batch 2 computes "abcd"; every later job is a hit.
    static = engine(byte_tokenizer, max_batch_size=2, policy="static")
    assert {r.job_id: out(r) for r in static.run_all(reqs)} == want
    assert prefill_rows(static) == [2, 1] and static.stats.prompt_cache_hits == 12 - 3


def test_cached_prompts_do_not_count_against_the_step_token_budget(byte_tokenizer: Any) -> None:
    # 8-token prompts and 12 tokens per step: a step (with its refill) can compute one more prompt after the
    # first, but prompts already in the cache join without limit.
    reqs = [req(f"j{i}", "abcdefg", seed=i, n=6) for i in range(4)]
    off = engine(byte_tokenizer, max_batch_size=4, max_tokens_per_step=12, prefill_ahead=0, prompt_cache_mb=0)
    on = engine(byte_tokenizer, max_batch_size=4, max_tokens_per_step=12, prefill_ahead=0)
    assert {r.job_id: out(r) for r in on.run_all(reqs)} == {r.job_id: out(r) for r in off.run_all(reqs)}

    def first_decode_rows(eng: TextEngine) -> int:
        return next(c.rows for c in eng.runner.calls if c.kind == "decode")  # type: ignore[attr-defined]

    assert first_decode_rows(off) == 2 and prefill_rows(off) == [1, 1, 1, 1]
    assert first_decode_rows(on) == 4 and prefill_rows(on) == [1]


def test_failed_and_nan_prompts_are_not_cached(byte_tokenizer: Any) -> None:
    poison = byte_tokenizer.encode("~", add_special_tokens=False).ids[0]
    nan = byte_tokenizer.encode("|", add_special_tokens=False).ids[0]
    eng = engine(byte_tokenizer, runner=FakeTextRunner(poison_token=poison, nan_token=nan))
    bad = eng.run_all([req("p1", "x~"), req("n1", "y|")])
    assert [r.error_code for r in bad] == [ErrorCode.engine_error, ErrorCode.nan_output]
    assert len(eng.prompts) == 0
    again = eng.run_all([req("p2", "x~"), req("n2", "y|"), req("ok", "fine")])
    assert [r.error_code for r in again] == [ErrorCode.engine_error, ErrorCode.nan_output, None]
    assert len(eng.prompts) == 1 and eng.stats.prompt_cache_hits == 0


def test_the_cache_keeps_the_most_recently_used_prompts_within_its_bytes() -> None:
    one = entry(8).nbytes  # 2 x 8 x 2 x 4 bytes + 16 bytes of logits = 144
    cache = PromptCache(3 * one)
    for k in range(3):
        cache.put([k], entry(8))
    assert len(cache) == 3 and cache.nbytes == 3 * one
    assert cache.get([0]) is not None  # 0 is now the most recently used
    cache.put([3], entry(8))  # evicts 1, the least recently used
    assert [k for k in range(4) if [k] in cache] == [0, 2, 3] and cache.evictions == 1
    cache.put([4], entry(16))  # twice the size: evicts two
    assert [k for k in range(5) if [k] in cache] == [3, 4] and cache.nbytes <= cache.max_bytes
    assert cache.get([1]) is None and cache.misses == 1 and cache.hits == 1
    cache.put([5], entry(100))  # larger than the whole cache: not kept, nothing evicted for it
    assert [5] not in cache and len(cache) == 2
    cache.put([6], entry(1, nan=True))
    assert [6] not in cache
    cache.put([3], entry(8))  # replacing an entry keeps the byte count right
    assert cache.nbytes == sum(p.nbytes for p in cache._entries.values())


def test_a_cache_of_zero_bytes_is_off_and_a_negative_size_is_refused() -> None:
    off = PromptCache(0)
    off.put([1], entry(1))
    assert off.get([1]) is None and len(off) == 0
    with pytest.raises(ValueError, match=">= 0"):
        PromptCache(-1)


def test_a_prefilled_entry_holds_a_copy_of_exactly_its_prompt() -> None:
    logits = np.arange(8, dtype=np.float32).reshape(2, 4)
    arrays = [np.arange(2 * 1 * 5 * 2, dtype=np.float32).reshape(2, 1, 5, 2)]
    block = KVBlock(arrays, np.array([5, 3]), left_padded=True)  # row 1: 3 real tokens at the right
    p = Prefilled.take(logits, block, 1)
    assert p.block.arrays[0].shape == (1, 1, 3, 2) and not p.block.left_padded
    np.testing.assert_array_equal(p.block.arrays[0][0], arrays[0][1, :, 2:])
    arrays[0][:] = -1  # the call's buffers may be reused: the entry must not change
    logits[:] = -1
    assert p.block.arrays[0].min() >= 0 and p.logits.tolist() == [4, 5, 6, 7]
