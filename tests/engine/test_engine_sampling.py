"""Sampling: greedy, top-k, top-p, penalties, n-gram ban, stop strings, per-candidate generators."""

from __future__ import annotations

import numpy as np
import pytest

from genqueue_worker.engine.sampling import (
    SamplingState,
    StopMatcher,
    sample_rows,
    seed_generator,
    validate_text_params,
)
from genqueue_worker.engine.types import TextParams

V = 10


def state(history: list[int] | None = None, index: int = 0, **kw) -> SamplingState:
    # Temperature 1 unless a test says otherwise: the distributions below are the logits' own.
    return SamplingState.create(TextParams(**{"temperature": 1.0, **kw}), index, history or [], V)


def test_greedy_picks_argmax_and_does_not_touch_the_generator() -> None:
    logits = np.array([[0, 1, 5, 2, 0, 0, 0, 0, 0, 0], [9, 1, 5, 2, 0, 0, 0, 0, 0, 9]], np.float32)
    st = [state(temperature=0), state(temperature=0)]
    before = st[0].rng.bit_generator.state
    tokens, ok = sample_rows(logits, st)
    assert tokens.tolist() == [2, 0] and ok.all()  # ties -> lowest id
    assert st[0].rng.bit_generator.state == before


def test_nan_row_is_flagged_alone() -> None:
    logits = np.zeros((3, V), np.float32)
    logits[1, 4] = np.nan
    logits[2, 3] = 5
    tokens, ok = sample_rows(logits, [state(temperature=0) for _ in range(3)])
    assert ok.tolist() == [True, False, True] and tokens[1] == -1 and tokens[2] == 3


def test_top_k_limits_the_support() -> None:
    logits = np.arange(V, dtype=np.float32)[None, :]
    seen = {int(sample_rows(logits, [state(seed=s, top_k=3, temperature=5.0)])[0][0]) for s in range(200)}
    assert seen == {7, 8, 9}


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = np.array([0.5, 0.3, 0.15, 0.05] + [0.0] * (V - 4))
    logits = np.log(np.maximum(probs, 1e-30)).astype(np.float32)[None, :]
    seen = {int(sample_rows(logits, [state(seed=s, top_p=0.7)])[0][0]) for s in range(300)}
    assert seen == {0, 1}  # 0.5 < 0.7 <= 0.8: the second token completes the nucleus
    seen = {int(sample_rows(logits, [state(seed=s, top_p=0.9)])[0][0]) for s in range(300)}
    assert seen == {0, 1, 2}


def test_sampling_follows_the_distribution() -> None:
    logits = np.log(np.array([0.7, 0.2, 0.1] + [1e-12] * (V - 3))).astype(np.float32)[None, :]
    counts = np.bincount([int(sample_rows(logits, [state(seed=s)])[0][0]) for s in range(2000)], minlength=V)
    assert abs(counts[0] / 2000 - 0.7) < 0.05 and abs(counts[2] / 2000 - 0.1) < 0.03


def test_repetition_penalty_discourages_seen_tokens() -> None:
    logits = np.array([[3.0, 2.9, -1.0, -1.2] + [-9.0] * (V - 4)], np.float32)
    assert sample_rows(logits, [state([0], temperature=0)])[0][0] == 0
    assert sample_rows(logits, [state([0], temperature=0, repetition_penalty=1.5)])[0][0] == 1  # 3/1.5 < 2.9
    # Negative logits are multiplied: a seen -1.0 becomes -1.5, below the unseen -1.2.
    neg = np.array([[-1.0, -1.2] + [-9.0] * (V - 2)], np.float32)
    assert sample_rows(neg, [state([0], temperature=0, repetition_penalty=1.5)])[0][0] == 1


def test_no_repeat_ngram_bans_the_completing_token() -> None:
    logits = np.zeros((1, V), np.float32)
    logits[0, 3] = 10  # the favourite
    logits[0, 5] = 1  # the runner-up
    # History ends with (1, 2), which was followed by 3 before: 3 would repeat the 3-gram (1, 2, 3).
    assert sample_rows(logits, [state([1, 2, 3, 1, 2], temperature=0, no_repeat_ngram_size=3)])[0][0] == 5
    # History ends with (3, 1), never followed by anything: nothing is banned.
    assert sample_rows(logits, [state([1, 2, 3, 1], temperature=0, no_repeat_ngram_size=3)])[0][0] == 3
    # The generated tokens count too (observe), not only the prompt.
    st = state([1, 2, 3, 1], temperature=0, no_repeat_ngram_size=3)
    st.observe(2)
    assert sample_rows(logits, [st])[0][0] == 5


def test_candidate_streams_differ_and_are_reproducible() -> None:
    a = [seed_generator(42, i).random() for i in range(3)]
    assert len(set(a)) == 3
    assert a == [seed_generator(42, i).random() for i in range(3)]
    assert seed_generator(-1, 0).random() == seed_generator((1 << 64) - 1, 0).random()


def test_a_row_does_not_depend_on_its_neighbours() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((8, 300)).astype(np.float32) * 3
    params = dict(temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.2)

    def states() -> list[SamplingState]:
        return [SamplingState.create(TextParams(seed=5, **params), i, [1, 2, 3], 300) for i in range(8)]

    together = sample_rows(logits, states())[0]
    alone = [int(sample_rows(logits[i : i + 1], [states()[i]])[0][0]) for i in range(8)]
    assert together.tolist() == alone


def test_stop_matcher_across_token_boundaries() -> None:
    m = StopMatcher(["\n\n", "END"])
    pieces = ["Hello", " wor", "ld\n", "\nmore"]
    text = ""
    cut = -1
    for p in pieces:
        text += p
        cut = m.find(text)
        if cut >= 0:
            break
    assert text[:cut] == "Hello world"
    m2 = StopMatcher(["END"])
    assert m2.find("abc E") == -1 and m2.find("abc EN") == -1 and m2.find("abc ENDx") == 4
    assert StopMatcher([]).find("anything") == -1


@pytest.mark.parametrize(
    "bad",
    [
        dict(max_new_tokens=0),
        dict(temperature=-1),
        dict(top_k=-1),
        dict(top_p=0),
        dict(top_p=1.5),
        dict(repetition_penalty=0),
        dict(no_repeat_ngram_size=-1),
        dict(n=0),
        dict(stop=("",)),
    ],
)
def test_validate_text_params(bad: dict) -> None:
    assert validate_text_params(TextParams(**bad)) is not None
    assert validate_text_params(TextParams()) is None


def test_vectorized_rows_match_single_rows_across_vocab_sizes() -> None:
    # The scratch buffer is reused across calls: a smaller vocabulary after a larger one must not see
    # stale mass in its padding.
    rng = np.random.default_rng(3)
    for vocab in (300, 257, 1882, 10, 257):
        logits = (rng.standard_normal((6, vocab)) * 3).astype(np.float32)

        def states(v: int = vocab) -> list[SamplingState]:
            return [SamplingState.create(TextParams(seed=9 + i, temperature=[1.0, 0.7][i % 2]), 0, [], v) for i in range(6)]

        together = sample_rows(logits, states())[0].tolist()
        alone = [int(sample_rows(logits[i : i + 1], [states()[i]])[0][0]) for i in range(6)]
        reference = []
        for i, st in enumerate(states()):
            x = logits[i].astype(np.float64) / st.params.temperature
            cdf = np.cumsum(np.exp(x - x.max()))
            reference.append(int(np.searchsorted(cdf, st.rng.random() * cdf[-1], side="right")))
        assert together == alone == reference


def test_chunked_and_threaded_rows_match_single_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    # Large batches are sampled in cache-sized chunks of rows, on several threads: forced here on small
    # batches, one of plain rows only (chunks are views of the scratch rows) and one mixing greedy, filtered,
    # penalized and NaN rows among the plain ones (chunks gather their rows).
    import genqueue_worker.engine.sampling as sampling

    monkeypatch.setattr(sampling, "CHUNK_LOGITS", 3 * 320)  # 3 rows of the padded width per chunk
    monkeypatch.setattr(sampling, "PARALLEL_MIN_LOGITS", 0)
    monkeypatch.setattr(sampling, "_threads", lambda: 4)
    monkeypatch.setattr(sampling, "_pool", None)
    submitted: list[tuple[int, int]] = []
    real_spans = sampling._for_spans

    def counting(fn, spans, logits):  # type: ignore[no-untyped-def]
        submitted.extend(spans)
        return real_spans(fn, spans, logits)

    monkeypatch.setattr(sampling, "_for_spans", counting)
    rng = np.random.default_rng(11)
    vocab = 300
    clean = (rng.standard_normal((20, vocab)) * 3).astype(np.float32)
    with_nan = clean.copy()
    with_nan[7, 5] = np.nan
    kinds = [dict(temperature=1.0), dict(temperature=0.7), dict(temperature=0), dict(top_k=5),
             dict(temperature=1.3, repetition_penalty=1.4)]
    try:
        for logits, mixed in ((clean, False), (with_nan, True)):
            def states(mixed: bool = mixed) -> list[SamplingState]:
                return [SamplingState.create(TextParams(seed=100 + i, **(kinds[i % len(kinds)] if mixed else kinds[i % 2])),  # type: ignore[arg-type]
                                             0, [1, 2, 3], vocab) for i in range(20)]

            submitted.clear()
            tokens, ok = sample_rows(logits, states())
            # Loading ran as 7 chunks of at most 3 rows, and sampling as several more.
            chunks = list(submitted)
            assert chunks[:7] == [(0, 3), (3, 6), (6, 9), (9, 12), (12, 15), (15, 18), (18, 20)]
            assert len(chunks) >= 7 + 2
            alone = [sample_rows(logits[i : i + 1], [states()[i]]) for i in range(20)]
            assert tokens.tolist() == [int(t[0]) for t, _ in alone]
            assert ok.tolist() == [bool(o[0]) for _, o in alone]
            if mixed:
                assert not ok[7] and tokens[7] == -1
            else:
                assert ok.all() and len(chunks) == 14  # every row plain: chunks are views of the scratch
        assert sampling._pool is not None  # the chunks ran on the pool's threads
    finally:
        if sampling._pool is not None:
            sampling._pool.shutdown()


def test_sampler_threads_follow_a_containers_cpu_quota(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from genqueue_worker.engine.sampling import _cgroup_cpus

    f = tmp_path / "cpu.max"
    f.write_text("200000 100000\n")  # 2 CPUs' worth of time per period
    assert _cgroup_cpus(f) == 2
    f.write_text("50000 100000\n")
    assert _cgroup_cpus(f) == 1
    f.write_text("max 100000\n")  # no quota
    assert _cgroup_cpus(f) > 64
    assert _cgroup_cpus(tmp_path / "absent") > 64  # cgroup v1 or no cgroup file: the affinity mask decides


def test_a_forked_child_samples_on_a_pool_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pool's threads do not survive a fork: a child that used the parent's pool would wait forever.
    import os

    import genqueue_worker.engine.sampling as sampling

    monkeypatch.setattr(sampling, "CHUNK_LOGITS", 320)
    monkeypatch.setattr(sampling, "PARALLEL_MIN_LOGITS", 0)
    monkeypatch.setattr(sampling, "_threads", lambda: 2)
    monkeypatch.setattr(sampling, "_pool", None)
    logits = np.random.default_rng(5).standard_normal((4, 300)).astype(np.float32)

    def states() -> list[SamplingState]:
        return [SamplingState.create(TextParams(seed=i, temperature=1.0), 0, [], 300) for i in range(4)]

    want = sample_rows(logits, states())[0].tolist()
    parent_pool = sampling._pool
    assert parent_pool is not None
    try:
        pid = os.fork()
        if pid == 0:  # the child: exit 0 only if it samples the same tokens on a fresh pool
            ok = sampling._pool is None and sample_rows(logits, states())[0].tolist() == want
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        parent_pool.shutdown()


def test_a_malformed_quota_is_ignored(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from genqueue_worker.engine.sampling import _cgroup_cpus

    f = tmp_path / "cpu.max"
    f.write_text("lots 100000\n")
    assert _cgroup_cpus(f) > 64
