"""The engines on real ONNX models with onnxruntime on the CPU (the exporter's quick built-in tiny-lm and
dcgan-digits, or the hand-made stand-ins; see conftest)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from genqueue_worker.engine import TextEngine, count_prompt_tokens, load_engine
from genqueue_worker.engine.ort_session import SessionConfig
from genqueue_worker.engine.ort_text import OrtTextRunner
from genqueue_worker.engine.runner import TextModelInfo
from genqueue_worker.engine.text_engine import TextEngineConfig
from genqueue_worker.engine.types import ErrorCode, JobResult, TextParams, TextRequest

PROMPTS = ["Once upon a time", "The cat", "1 2 3", "", "Hello, my name is", "In the beginning there was"]


def text_engine(models: dict[str, Any], **cfg: Any) -> TextEngine:
    eng = load_engine(models["text"], "cpu", **cfg)
    assert isinstance(eng, TextEngine)
    return eng


def fillers(k: int, max_new: int = 24) -> list[TextRequest]:
    return [
        TextRequest(f"fill{i}", PROMPTS[i % len(PROMPTS)] * (1 + i % 3), TextParams(max_new_tokens=4 + (i * 5) % max_new, temperature=0.9, seed=i, ignore_eos=True))
        for i in range(k)
    ]


def probe() -> list[TextRequest]:
    return [
        TextRequest("greedy", "Once upon a time", TextParams(max_new_tokens=24, temperature=0, ignore_eos=True)),
        TextRequest("sampled", "The cat", TextParams(max_new_tokens=24, temperature=1.0, top_k=40, top_p=0.95, seed=1234, ignore_eos=True)),
        TextRequest("n3", "1 2 3", TextParams(max_new_tokens=16, temperature=0.8, seed=9, n=3, repetition_penalty=1.2, ignore_eos=True)),
    ]


def key(r: JobResult) -> Any:
    return r.status, r.output


def test_same_tokens_alone_in_a_batch_of_32_and_joining_midway(models: dict[str, Any]) -> None:
    # The prompt cache is off here, so that every prompt is computed inside its own batch.
    eng = text_engine(models, max_batch_size=32, prompt_cache_mb=0)
    alone = {r.job_id: key(eng.run_all([r])[0]) for r in probe()}
    assert all(v[0] == "succeeded" for v in alone.values())
    # In a full batch of 32 rows with neighbours of other lengths and settings.
    batch = eng.run_all([*fillers(26), *probe()])
    assert {r.job_id: key(r) for r in batch[26:]} == alone
    # Joining midway: 8 slots are busy with fillers; the probes wait, then join a running batch whose
    # cache is longer than their prompts (left-padded in) or shorter (the batch is re-laid out).
    small = text_engine(models, max_batch_size=8, prompt_cache_mb=0)
    joined = small.run_all([*fillers(12), *probe()])
    assert {r.job_id: key(r) for r in joined[12:]} == alone
    assert all(r.metrics["wait_ms"] > 0 for r in joined[12:])


def test_a_failed_decode_retried_row_by_row_keeps_every_rows_tokens(models: dict[str, Any]) -> None:
    # On the real runner, whose logits come back in a buffer that the next call reuses.
    reqs = [*fillers(5), *probe()]
    clean = {r.job_id: key(r) for r in text_engine(models, max_batch_size=8).run_all(reqs)}
    eng = text_engine(models, max_batch_size=8)
    eng.run_all([])  # warm-up first: its decode calls are not the ones to fail
    real_decode, calls = eng.runner.decode, [0]

    def flaky(cache: Any, ids: Any) -> Any:
        calls[0] += 1
        if calls[0] in (3, 9):  # two batch steps fail once each; every row is then run alone
            raise RuntimeError("injected decode failure")
        return real_decode(cache, ids)

    eng.runner.decode = flaky  # type: ignore[method-assign]
    reserved = eng.cache.nbytes()
    assert {r.job_id: key(r) for r in eng.run_all(reqs)} == clean
    assert eng.stats.retries >= 2 and eng.cache.nbytes() == reserved  # rebuilt in the reserved cache


def test_a_cached_prompt_gives_the_tokens_of_a_fresh_prefill(models: dict[str, Any]) -> None:
    alone = {r.job_id: key(text_engine(models, prompt_cache_mb=0).run_all([r])[0]) for r in probe()}
    eng = text_engine(models, max_batch_size=8)
    first = eng.run_all([*fillers(6), *probe()])  # fillers 0-2 share prompts with the probes
    assert {r.job_id: key(r) for r in first[6:]} == alone
    hits = eng.stats.prompt_cache_hits
    again = eng.run_all([*fillers(6), *probe()])  # every prompt is in the cache now
    assert {r.job_id: key(r) for r in again[6:]} == alone
    assert [key(r) for r in again[:6]] == [key(r) for r in first[:6]]
    assert eng.stats.prompt_cache_hits == hits + 9


def test_device_cache_code_path_gives_the_same_tokens(tmp_path: Any) -> None:
    # The device-resident cache serves concat-contract graphs (the CUDA path): a hand-made one here.
    pytest.importorskip("onnx")
    from engine_testmodels import build_text_model

    from genqueue.registry import Registry

    build_text_model(tmp_path / "concat-lm" / "1")
    entry = Registry(tmp_path).resolve("concat-lm")
    info = TextModelInfo.from_spec(entry.manifest.text)
    runner = OrtTextRunner(entry.onnx_path, info, SessionConfig(provider="cpu"), cache_device="cpu")
    eng = TextEngine(entry, runner=runner, config=TextEngineConfig(max_batch_size=8))
    host = load_engine(entry, "cpu", max_batch_size=8)
    reqs = [*fillers(10), *probe()]
    assert [key(r) for r in eng.run_all(reqs)] == [key(r) for r in host.run_all(reqs)]
    assert eng.cache.round_trips > 0  # type: ignore[attr-defined]


def test_short_jobs_finish_first_and_alone_in_their_own_time(models: dict[str, Any]) -> None:
    eng = text_engine(models, max_batch_size=8)
    eng.start()
    try:
        order: list[str] = []
        futs = []
        for n in [60, 4, 30, 8]:
            f = eng.submit(TextRequest(f"n{n}", "Once", TextParams(max_new_tokens=n, ignore_eos=True, seed=n)))
            f.add_done_callback(lambda fut: order.append(fut.result().job_id))
            futs.append(f)
        results = [f.result(60) for f in futs]
    finally:
        eng.stop()
    assert order == ["n4", "n8", "n30", "n60"]
    room = eng.info.context_length - count_prompt_tokens(eng.tokenizer, "Once", eng.prepend_bos)
    assert [r.metrics["tokens"] for r in results] == [min(n, room) for n in [60, 4, 30, 8]]


def _repeats(ids: list[int], n: int) -> bool:
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) != len(set(grams))


def test_repetition_is_controllable(models: dict[str, Any]) -> None:
    eng = text_engine(models, return_token_ids=True)

    def greedy(prompt: str, **kw: Any) -> list[int]:
        p = TextParams(max_new_tokens=48, temperature=0, ignore_eos=True, **kw)
        return eng.run_all([TextRequest("g", prompt, p)])[0].output["token_ids"][0]  # type: ignore[index]

    looping = next((p for p in PROMPTS if _repeats(greedy(p), 3)), None)
    if looping is None:
        pytest.skip("greedy decoding of this model never repeated a 3-gram; nothing to control")
    assert not _repeats(greedy(looping, no_repeat_ngram_size=3), 3)
    plain = greedy(looping)
    penalized = greedy(looping, repetition_penalty=3.0)
    assert penalized != plain
    assert len(set(penalized)) > len(set(plain))  # more distinct tokens once seen ones are discouraged


def test_prompt_limits_and_token_count(models: dict[str, Any]) -> None:
    eng = text_engine(models)
    ctx = eng.info.context_length
    prompt = "Hello, my name is"
    res = eng.run_all([TextRequest("a", prompt, TextParams(max_new_tokens=3))])[0]
    assert res.metrics["prompt_tokens"] == count_prompt_tokens(eng.tokenizer, prompt, eng.prepend_bos)
    assert count_prompt_tokens(eng.tokenizer, "") == 1
    long = " ".join(["word"] * (ctx * 2))
    too_long = eng.run_all([TextRequest("b", long, TextParams())])[0]
    assert too_long.error_code is ErrorCode.prompt_too_long


def test_load_engine_validates_options(models: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="unknown text engine option"):
        load_engine(models["text"], "cpu", max_batch=3)


def test_no_torch_in_the_worker_process(models: dict[str, Any]) -> None:
    code = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        from genqueue.registry import Registry
        from genqueue_worker.engine import load_engine
        from genqueue_worker.engine.types import ImageParams, ImageRequest, TextParams, TextRequest
        reg = Registry(Path({str(models["root"])!r}))
        text = load_engine(reg.resolve("tiny-lm"), "cpu")
        image = load_engine(reg.resolve("dcgan-digits"), "cpu")
        t = text.run_all([TextRequest("t", "hi", TextParams(max_new_tokens=2))])[0]
        label = 0 if image.info.num_classes else None
        i = image.run_all([ImageRequest("i", ImageParams(class_label=label))])[0]
        image.stop()
        print(json.dumps({{"torch": "torch" in sys.modules, "text": t.status, "image": i.status}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"torch": False, "text": "succeeded", "image": "succeeded"}


def test_engines_report_the_provider_that_runs(models: dict[str, Any]) -> None:
    for kind in ("text", "image"):
        eng = load_engine(models[kind], "auto")  # auto may ask for CUDA; without a GPU ORT falls back
        assert eng.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
        eng.stop()


def test_a_manifest_that_misnames_the_kv_contract_is_refused(tmp_path: Any) -> None:
    pytest.importorskip("onnx")
    from engine_testmodels import build_text_model

    from genqueue.registry import Registry

    folder = build_text_model(tmp_path / "lm" / "1")  # a concat graph
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["text"]["kv_contract"] = "ragged"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    entry = Registry(tmp_path).resolve("lm")
    with pytest.raises(ValueError, match="kv_contract='ragged' but the graph"):
        OrtTextRunner(entry.onnx_path, TextModelInfo.from_spec(entry.manifest.text), SessionConfig(provider="cpu"))
