"""Text engine behaviour on the fake runner (whose logits are a function of each row's cached history, so
any KV bookkeeping mistake changes the tokens): batching invariance, finish conditions, cancel, failures."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from bench.engine_benchmarks import POLICIES
from genqueue_worker.engine.runner import TextModelInfo
from genqueue_worker.engine.scheduler import choose_ahead
from genqueue_worker.engine.text_engine import TextEngine, TextEngineConfig
from genqueue_worker.engine.types import ErrorCode, JobResult, TextParams, TextRequest
from tests.engine.fake_runners import FakeTextRunner

EOS = 256


def engine(tok: Any, runner: FakeTextRunner | None = None, policy: str = "continuous", **cfg: Any) -> TextEngine:
    return TextEngine(runner=runner or FakeTextRunner(), tokenizer=tok, config=TextEngineConfig(**cfg),
                      scheduler=POLICIES[policy])


def mixed_requests(k: int = 12) -> list[TextRequest]:
    """Different prompt lengths, lengths, sampling settings and candidate counts."""
    reqs = []
    for i in range(k):
        p = TextParams(
            max_new_tokens=4 + (i * 7) % 23,
            temperature=[0.0, 0.8, 1.3][i % 3],
            top_k=[0, 20][i % 2],
            top_p=[1.0, 0.9][(i // 2) % 2],
            repetition_penalty=[1.0, 1.3][(i // 3) % 2],
            no_repeat_ngram_size=[0, 2][(i // 4) % 2],
            seed=100 + i,
            n=1 + (i % 4 == 1),
            ignore_eos=True,
        )
        reqs.append(TextRequest(f"job{i}", "p" * (1 + (i * 5) % 17), p))
    return reqs


def outputs(results: list[JobResult]) -> dict[str, Any]:
    return {r.job_id: (r.status, r.output) for r in results}


def test_same_tokens_alone_batched_static_and_joining_midway(byte_tokenizer: Any) -> None:
    reqs = mixed_requests()
    alone = {r.job_id: outputs(engine(byte_tokenizer).run_all([r]))[r.job_id] for r in reqs}
    assert all(v[0] == "succeeded" for v in alone.values())
    assert outputs(engine(byte_tokenizer, max_batch_size=32).run_all(reqs)) == alone
    # 4 slots: most jobs join a running batch midway, some longer than the batch (cache re-laid out).
    small = engine(byte_tokenizer, max_batch_size=4, trim_slack=1)
    assert outputs(small.run_all(reqs)) == alone
    assert small.cache.relayouts > 0  # type: ignore[attr-defined]
    assert outputs(engine(byte_tokenizer, max_batch_size=4, policy="static").run_all(reqs)) == alone


def test_finished_rows_cost_no_compute_in_continuous(byte_tokenizer: Any) -> None:
    reqs = [TextRequest(f"j{i}", "hi", TextParams(max_new_tokens=n, ignore_eos=True)) for i, n in enumerate([3, 10, 5, 20])]
    cont = engine(byte_tokenizer, max_batch_size=4)
    cont.run_all(reqs)
    rows = [c.rows for c in cont.runner.calls if c.kind == "decode"]  # type: ignore[attr-defined]
    assert rows == [4, 4, 3, 3, 2, 2, 2, 2, 2] + [1] * 10
    assert sum(rows) == sum(n - 1 for n in [3, 10, 5, 20])
    static = engine(byte_tokenizer, max_batch_size=4, policy="static")
    static.run_all(reqs)
    assert [c.rows for c in static.runner.calls if c.kind == "decode"] == [4] * 19  # type: ignore[attr-defined]
    assert static.stats.useful_rows == cont.stats.useful_rows == sum(rows)


def test_prefill_ahead_runs_waiting_prompts_early_without_changing_tokens(byte_tokenizer: Any) -> None:
    reqs = mixed_requests()
    off = engine(byte_tokenizer, max_batch_size=4, prefill_ahead=0)
    on = engine(byte_tokenizer, max_batch_size=4, prefill_ahead=3)
    assert outputs(on.run_all(reqs)) == outputs(off.run_all(reqs))
    assert off.stats.prefill_ahead_rows == 0 and on.stats.prefill_ahead_rows > 0
    assert on.stats.prefill_calls < off.stats.prefill_calls
    prefills = [c.rows for c in on.runner.calls if c.kind == "prefill"]  # type: ignore[attr-defined]
    # One row per prompt: the first batch (jobs 0-2, four candidate rows) plus the next three waiting prompts.
    assert prefills[0] == 3 + 3
    assert max(prefills[1:]) <= 1 + 3
    # Static batching (the benchmark's baseline) prefills each batch as it is admitted, nothing ahead.
    static = engine(byte_tokenizer, max_batch_size=4, policy="static")
    static.run_all(reqs)
    assert static.stats.prefill_ahead_rows == 0


def test_prompts_run_ahead_stay_within_the_token_budget() -> None:
    # The call's padded size: rows x longest prompt <= budget.
    assert choose_ahead([10], [10, 10, 10, 10], held=0, budget=40) == 3
    assert choose_ahead([2], [2, 30], held=0, budget=40) == 1  # a long prompt would pad every row to 30
    # Prompt tokens already held for waiting jobs (prefilled by earlier calls) count too.
    assert choose_ahead([5], [5, 5, 5], held=28, budget=40) == 2
    assert choose_ahead([5], [5], held=40, budget=40) == 0
    # Admission order: the first prompt that does not fit ends the run, shorter ones behind it wait.
    assert choose_ahead([4], [4, 40, 4], held=0, budget=40) == 1


def test_a_prefilled_waiting_job_can_be_canceled(byte_tokenizer: Any) -> None:
    def req(job_id: str, prompt: str, n: int) -> TextRequest:
        return TextRequest(job_id, prompt, TextParams(max_new_tokens=n, temperature=0.9, seed=7, ignore_eos=True))

    alone = outputs(engine(byte_tokenizer).run_all([req("c", "xyz", 5)]))
    eng = engine(byte_tokenizer, runner=FakeTextRunner(delay_s=0.003), max_batch_size=1)
    futs = [eng.submit(r) for r in (req("a", "x", 40), req("b", "xy", 5), req("c", "xyz", 5))]
    eng.start()  # the first step admits a, and its prefill call runs b's and c's prompts too
    try:
        time.sleep(0.03)
        held = eng._jobs["c"].prefilled  # still waiting behind a: holds its prompt's own KV, one row
        assert held is not None and held.block.rows == 1
        assert all(a.shape[2] == len(eng._jobs["c"].prompt_ids) for a in held.block.arrays)
        eng.cancel("b")
        ra, rb, rc = (f.result(10) for f in futs)
    finally:
        eng.stop()
    assert eng.stats.prefill_ahead_rows == 2
    assert ra.status == "succeeded" and rb.status == "canceled" and rb.metrics["tokens"] == 0
    assert outputs([rc]) == alone


def test_a_failed_call_leaves_the_prompts_run_ahead_waiting(byte_tokenizer: Any) -> None:
    reqs = [r for r in mixed_requests(6) if r.params.n == 1][:4]
    clean = outputs(engine(byte_tokenizer, max_batch_size=1).run_all(reqs))
    eng = engine(byte_tokenizer, runner=FakeTextRunner(fail_calls={0}), max_batch_size=1)
    assert outputs(eng.run_all(reqs)) == clean
    prefills = [c.rows for c in eng.runner.calls if c.kind == "prefill"]  # type: ignore[attr-defined]
    # Call 0 (the first job plus three prompts ahead) fails; the first job is retried alone, the other three are not run
    # ahead again and each gets its own call when admitted.
    assert prefills == [4, 1, 1, 1, 1]


def test_futures_resolve_in_finish_order(byte_tokenizer: Any) -> None:
    eng = engine(byte_tokenizer, runner=FakeTextRunner(delay_s=0.002), max_batch_size=8)
    eng.start()
    try:
        order: list[str] = []
        lock = threading.Lock()
        futs = []

        def record(fut: Any) -> None:
            with lock:
                order.append(fut.result().job_id)

        for n in [40, 5, 25, 2, 12]:
            f = eng.submit(TextRequest(f"j{n}", "x", TextParams(max_new_tokens=n, ignore_eos=True)))
            f.add_done_callback(record)
            futs.append(f)
        results = [f.result(timeout=30) for f in futs]
    finally:
        eng.stop()
    assert order == ["j2", "j5", "j12", "j25", "j40"]
    assert all(r.status == "succeeded" for r in results)
    by = {r.job_id: r for r in results}
    assert by["j2"].metrics["inference_ms"] < by["j40"].metrics["inference_ms"]
    assert by["j40"].metrics["tokens"] == 40 and by["j40"].metrics["batch_size"] > 1


def scripted(text: str, then_eos: bool = True):
    """next_token function emitting ``text`` byte by byte after the prompt, then EOS."""
    from engine_testmodels import build_byte_tokenizer

    ids = build_byte_tokenizer().encode(text, add_special_tokens=False).ids
    state: dict[int, int] = {}

    def nxt(history: list[int]) -> int:
        start = state.setdefault(id(nxt), len(history))  # the prompt length, seen at prefill
        k = len(history) - start
        return ids[k] if k < len(ids) else (EOS if then_eos else ids[-1])

    return nxt


def test_stop_string_across_token_boundaries(byte_tokenizer: Any) -> None:
    runner = FakeTextRunner(next_token=scripted("Hello world\n\nBye"))
    res = engine(byte_tokenizer, runner=runner).run_all(
        [TextRequest("a", "p", TextParams(max_new_tokens=50, temperature=0, stop=("\n\n", "zzz")))]
    )[0]
    assert res.output == {"texts": ["Hello world"], "finish_reasons": ["stop"]}


def test_stop_string_of_characters_split_over_several_tokens(byte_tokenizer: Any) -> None:
    runner = FakeTextRunner(next_token=scripted("añ€!x😀y"))  # one token per byte
    res = engine(byte_tokenizer, runner=runner).run_all(
        [TextRequest("a", "p", TextParams(max_new_tokens=40, temperature=0, stop=("€!", "nope")))]
    )[0]
    assert res.output == {"texts": ["añ"], "finish_reasons": ["stop"]}
    assert res.metrics["tokens"] == len("añ€!".encode())  # it ended on the token that completed the stop string
    res = engine(byte_tokenizer, runner=FakeTextRunner(next_token=scripted("añ€!x😀y"))).run_all(
        [TextRequest("b", "p", TextParams(max_new_tokens=40, temperature=0, stop=("😀",)))]
    )[0]
    assert res.output == {"texts": ["añ€!x"], "finish_reasons": ["stop"]}


def test_a_nul_byte_in_the_output_becomes_the_replacement_character(byte_tokenizer: Any) -> None:
    # PostgreSQL stores no U+0000 in text or JSONB; an output holding one could never be written.
    runner = FakeTextRunner(next_token=scripted("ab\x00c"))
    res = engine(byte_tokenizer, runner=runner).run_all([TextRequest("a", "p", TextParams(max_new_tokens=9, temperature=0))])[0]
    assert res.output == {"texts": ["ab\ufffdc"], "finish_reasons": ["eos"]}


def test_eos_ends_the_job_and_is_not_in_the_text(byte_tokenizer: Any) -> None:
    runner = FakeTextRunner(next_token=scripted("ok"))
    res = engine(byte_tokenizer, runner=runner).run_all([TextRequest("a", "p", TextParams(max_new_tokens=50, temperature=0))])[0]
    assert res.output == {"texts": ["ok"], "finish_reasons": ["eos"]}
    assert res.metrics["tokens"] == 2


def test_length_is_clamped_to_the_context(byte_tokenizer: Any) -> None:
    info = TextModelInfo(257, 1, 1, 2, context_length=16, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS)
    eng = engine(byte_tokenizer, runner=FakeTextRunner(info=info))
    res = eng.run_all([TextRequest("a", "x" * 10, TextParams(max_new_tokens=100, ignore_eos=True))])[0]
    assert res.output is not None and res.output["finish_reasons"] == ["length"] and res.metrics["tokens"] == 6
    too_long = eng.run_all([TextRequest("b", "x" * 16, TextParams())])[0]
    assert too_long.status == "failed" and too_long.error_code is ErrorCode.prompt_too_long


def test_empty_prompt_starts_from_bos(byte_tokenizer: Any) -> None:
    runner = FakeTextRunner()
    res = engine(byte_tokenizer, runner=runner).run_all([TextRequest("a", "", TextParams(max_new_tokens=3))])[0]
    assert res.status == "succeeded" and res.metrics["prompt_tokens"] == 1
    assert runner.calls[0].kind == "prefill" and runner.calls[0].width == 1


def test_n_candidates_are_ordered_distinct_and_reproducible(byte_tokenizer: Any) -> None:
    req = TextRequest("a", "seed me", TextParams(max_new_tokens=12, n=3, seed=7, ignore_eos=True))
    one = engine(byte_tokenizer).run_all([req])[0]
    other = engine(byte_tokenizer).run_all([TextRequest("z", "noise", TextParams(max_new_tokens=5)), req])[1]
    assert one.output == other.output
    assert one.output is not None and len(set(one.output["texts"])) == 3
    assert one.metrics["tokens"] == 36


def test_invalid_and_preprocess_errors_fail_alone(byte_tokenizer: Any) -> None:
    class Picky:
        def encode(self, text: str, add_special_tokens: bool = False) -> Any:
            if "BOOM" in text:
                raise ValueError("cannot tokenize")
            return byte_tokenizer.encode(text, add_special_tokens=add_special_tokens)

        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            return str(byte_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

    eng = TextEngine(runner=FakeTextRunner(), tokenizer=Picky(), config=TextEngineConfig())
    res = eng.run_all(
        [
            TextRequest("bad", "x", TextParams(top_p=0)),
            TextRequest("boom", "BOOM", TextParams()),
            TextRequest("toomany", "x", TextParams(n=99)),
            TextRequest("fine", "x", TextParams(max_new_tokens=3)),
        ]
    )
    assert [r.error_code for r in res] == [ErrorCode.invalid_input, ErrorCode.preprocess_error, ErrorCode.invalid_input, None]


def test_postprocess_error_fails_that_job_only(byte_tokenizer: Any) -> None:
    class BadDecode:
        def encode(self, text: str, add_special_tokens: bool = False) -> Any:
            return byte_tokenizer.encode(text, add_special_tokens=add_special_tokens)

        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            text = str(byte_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))
            if "!" in text:
                raise UnicodeError("broken detokenizer")
            return text

    bang = byte_tokenizer.encode("!").ids[0]
    oh = byte_tokenizer.encode("o").ids[0]
    runner = FakeTextRunner(next_token=lambda h: oh if h[0] == byte_tokenizer.encode("a").ids[0] else bang)
    eng = TextEngine(runner=runner, tokenizer=BadDecode(), config=TextEngineConfig())
    res = eng.run_all([TextRequest("ok", "a", TextParams(max_new_tokens=3, ignore_eos=True)), TextRequest("bad", "b", TextParams(max_new_tokens=3, stop=("zz",)))])
    assert res[0].status == "succeeded" and res[0].output == {"texts": ["ooo"], "finish_reasons": ["length"]}
    assert res[1].error_code is ErrorCode.postprocess_error


def test_runner_exception_fails_only_the_poisoned_job(byte_tokenizer: Any) -> None:
    reqs = mixed_requests(8)
    poison = byte_tokenizer.encode("§", add_special_tokens=False).ids[0]
    alone = outputs(engine(byte_tokenizer, runner=FakeTextRunner(poison_token=poison)).run_all(reqs))
    bad_prompt = TextRequest("poison-prompt", "ab§", TextParams(max_new_tokens=5))  # fails in prefill
    bad_later = TextRequest("poison-later", "zz", TextParams(max_new_tokens=20, ignore_eos=True))

    def nxt(h: list[int]) -> int:
        # Only the "zz" job generates the poison token, after 3 tokens: the failure hits a decode batch.
        return poison if h[:2] == byte_tokenizer.encode("zz").ids and len(h) >= 5 else (sum(h) * 31) % 250

    runner = FakeTextRunner(poison_token=poison, next_token=None)
    runner_later = FakeTextRunner(poison_token=poison, next_token=nxt)
    eng = engine(byte_tokenizer, runner=runner, max_batch_size=4, max_attempts=3)
    res = outputs(eng.run_all([*reqs[:3], bad_prompt, *reqs[3:]]))
    assert res.pop("poison-prompt")[0] == "failed"
    assert res == alone and eng.stats.retries >= 3
    eng2 = engine(byte_tokenizer, runner=runner_later, max_batch_size=4)
    out2 = eng2.run_all([bad_later, *reqs])
    assert out2[0].status == "failed" and out2[0].error_code is ErrorCode.engine_error
    assert all(r.status == "succeeded" for r in out2[1:])


def test_transient_runner_failure_is_retried_without_changing_outputs(byte_tokenizer: Any) -> None:
    reqs = mixed_requests(8)
    clean = outputs(engine(byte_tokenizer, max_batch_size=4).run_all(reqs))
    flaky = FakeTextRunner(fail_calls={0, 5, 9})  # a prefill and decodes
    eng = engine(byte_tokenizer, runner=flaky, max_batch_size=4)
    assert outputs(eng.run_all(reqs)) == clean
    assert eng.stats.retries >= 3


def test_nan_logits_fail_that_job_with_nan_output(byte_tokenizer: Any) -> None:
    reqs = mixed_requests(6)
    nan_tok = byte_tokenizer.encode("¤", add_special_tokens=False).ids[0]
    alone = outputs(engine(byte_tokenizer, runner=FakeTextRunner(nan_token=nan_tok)).run_all(reqs))
    eng = engine(byte_tokenizer, runner=FakeTextRunner(nan_token=nan_tok), max_batch_size=3)
    res = eng.run_all([TextRequest("nan", "x¤", TextParams(n=2)), *reqs])
    assert res[0].error_code is ErrorCode.nan_output
    assert outputs(res[1:]) == alone


def test_cancel_running_and_waiting_jobs(byte_tokenizer: Any) -> None:
    eng = engine(byte_tokenizer, runner=FakeTextRunner(delay_s=0.003), max_batch_size=2)
    eng.start()
    try:
        long_a = eng.submit(TextRequest("a", "x", TextParams(max_new_tokens=200, ignore_eos=True)))
        short = eng.submit(TextRequest("b", "x", TextParams(max_new_tokens=20, ignore_eos=True)))
        waiting = eng.submit(TextRequest("c", "x", TextParams(max_new_tokens=200, ignore_eos=True)))
        time.sleep(0.05)
        eng.cancel("a")
        eng.cancel("c")
        ra, rb, rc = long_a.result(10), short.result(10), waiting.result(10)
    finally:
        eng.stop()
    assert ra.status == "canceled" and 0 < ra.metrics["tokens"] < 200
    assert rb.status == "succeeded" and rb.metrics["tokens"] == 20
    assert rc.status == "canceled"


def test_stop_without_drain_gives_jobs_back_and_refuses_new_ones(byte_tokenizer: Any) -> None:
    eng = engine(byte_tokenizer, runner=FakeTextRunner(delay_s=0.003), max_batch_size=2)
    eng.start()
    f = eng.submit(TextRequest("a", "x", TextParams(max_new_tokens=250, ignore_eos=True)))
    time.sleep(0.03)
    eng.stop(drain=False, timeout=5)
    assert f.result(1).error_code is ErrorCode.shutdown
    late = eng.submit(TextRequest("b", "x", TextParams()))
    assert late.result(1).error_code is ErrorCode.shutdown


def test_stop_with_drain_finishes_admitted_work(byte_tokenizer: Any) -> None:
    eng = engine(byte_tokenizer, max_batch_size=2)
    eng.start()
    futs = [eng.submit(TextRequest(f"j{i}", "x", TextParams(max_new_tokens=30, ignore_eos=True))) for i in range(5)]
    eng.stop(drain=True, timeout=10)
    assert [f.result(1).status for f in futs] == ["succeeded"] * 5


def test_run_all_refuses_a_started_engine(byte_tokenizer: Any) -> None:
    eng = engine(byte_tokenizer)
    eng.start()
    try:
        with pytest.raises(RuntimeError):
            eng.run_all([])
    finally:
        eng.stop()


def test_duplicate_submit_shares_the_result(byte_tokenizer: Any) -> None:
    eng = engine(byte_tokenizer)
    req = TextRequest("same", "x", TextParams(max_new_tokens=5, seed=3))
    futs = [eng.submit(req), eng.submit(req)]
    eng._loop(until_idle=True)
    a, b = (f.result(1) for f in futs)
    assert a.status == "succeeded" and a.output == b.output


def test_internal_error_fails_the_batch_and_the_engine_recovers(byte_tokenizer: Any) -> None:
    class Broken(FakeTextRunner):
        armed = True

        def decode(self, cache: Any, input_ids: Any) -> Any:
            logits = super().decode(cache, input_ids)
            if self.armed:
                self.armed = False
                return logits[:0]  # wrong shape: a bug outside the runner call's error handling
            return logits

    eng = engine(byte_tokenizer, runner=Broken())
    first = eng.run_all([TextRequest("a", "x", TextParams(max_new_tokens=5)), TextRequest("b", "y", TextParams(max_new_tokens=5))])
    assert [r.error_code for r in first] == [ErrorCode.engine_error] * 2
    again = eng.run_all([TextRequest("c", "x", TextParams(max_new_tokens=5))])
    assert again[0].status == "succeeded"


def test_a_stop_string_ending_inside_a_token_that_starts_a_multibyte_character() -> None:
    # GPT-2's vocabulary has tokens like "." followed by the first bytes of "”": the stop string "." is
    # complete at that token although the decoded text ends in a partial character there.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = EOS
    vocab["âĢ"], vocab[".âĢ"] = 257, 258  # bytes E2 80, and 2E E2 80
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("â", "Ģ"), (".", "âĢ")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    script = [vocab["a"], vocab["b"], 258, vocab["Ŀ"]]  # "Ŀ" is byte 9D, which completes U+201D

    def nxt(history: list[int]) -> int:
        k = len(history) - 1  # after a one-token prompt
        return script[k] if k < len(script) else vocab["a"]

    info = TextModelInfo(vocab_size=260, n_layer=1, n_head=1, head_dim=2, context_length=256,
                         bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS)
    for max_new in (3, 8):  # the stop token is the last one allowed, or one of many
        eng = TextEngine(runner=FakeTextRunner(info=info, next_token=nxt), tokenizer=tok, config=TextEngineConfig())
        res = eng.run_all([TextRequest("j", "x", TextParams(max_new_tokens=max_new, temperature=0, stop=(".",)))])[0]
        assert res.output == {"texts": ["ab"], "finish_reasons": ["stop"]}, (max_new, res.output)
        assert res.metrics["tokens"] == 3
