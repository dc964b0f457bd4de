"""One decode step's cost under each KV-cache contract, through the worker's own runner and caches.

    python -m bench.kvstep                      # tiny-lm's shape, 32 rows, equal and spread lengths
    python -m bench.kvstep --rows 8 --layers 4 --embd 256
    python -m bench.kvstep --policies           # also continuous vs static on each contract
A GPT of the requested shape (random weights) is exported once per contract (ragged, append, concat) with
the project's exporter, parity-checked as usual; then, per contract and row-length mix, a cache is filled
with the rows and ``--steps`` decode steps are timed through ``OrtTextRunner.decode`` (IO binding, the
cache's own buffers), keeping the fastest of ``--repeats`` rounds. Lengths grow by ``--steps`` during a
round, which is small next to the lengths measured. The cache holds random values: never-written zeroed
memory maps to one shared page and reads unrealistically fast.

``--policies`` also runs the continuous-vs-static comparison (the calibration workload, EOS ignored, so the
random weights do not change the work) on each contract's model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

CONTRACTS: tuple[Literal["ragged", "append", "concat"], ...] = ("ragged", "append", "concat")


def export_all(folder: Path, layers: int, heads: int, embd: int, vocab: int, ctx: int) -> dict[str, Any]:
    import torch

    from bench.gpu_engine import word_tokenizer
    from genqueue.registry import ModelKind, Registry
    from genqueue_exporter.export import ExportJob, export_model
    from genqueue_exporter.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab, n_layer=layers, n_head=heads, n_embd=embd, block_size=ctx)).eval()
    for c in CONTRACTS:
        job = ExportJob(kind=ModelKind.text, name=f"kv-{c}", version="1", model=model, source="random",
                        extra={"config": model.config.to_dict()}, tokenizer_json=word_tokenizer(vocab), kv_contract=c)
        export_model(job, folder)
    reg = Registry(folder)
    return {c: reg.resolve(f"kv-{c}") for c in CONTRACTS}


def step_ms(entry: Any, lengths: np.ndarray, steps: int, repeats: int) -> float:
    from genqueue_worker.engine.kv_cache import KVBlock
    from genqueue_worker.engine.ort_session import SessionConfig
    from genqueue_worker.engine.ort_text import OrtTextRunner
    from genqueue_worker.engine.runner import TextModelInfo

    spec = entry.manifest.text
    info = TextModelInfo.from_spec(spec)
    runner = OrtTextRunner(entry.onnx_path, info, SessionConfig(provider="cpu"))
    rng = np.random.default_rng(0)
    rows, width = len(lengths), int(lengths.max())
    arrays = [rng.standard_normal((rows, spec.n_head, width, spec.head_dim)).astype(np.float32) for _ in range(2 * spec.n_layer)]
    ids = np.zeros((rows, 1), np.int64)
    best = float("inf")
    for _ in range(repeats):
        cache = runner.new_cache()
        cache.append(KVBlock(arrays, lengths.astype(np.int64)), range(rows))
        runner.decode(cache, ids)  # settle buffers and ORT's arena for this shape
        t0 = time.perf_counter()
        for _ in range(steps):
            runner.decode(cache, ids)
        best = min(best, (time.perf_counter() - t0) / steps)
    return round(best * 1000, 3)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--embd", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=1882)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--length", type=int, default=140, help="the longest row; 'spread' rows are 10..length")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--policies", action="store_true", help="also continuous vs static on each contract")
    args = ap.parse_args(argv)
    mixes = {
        "equal": np.full(args.rows, args.length),
        "spread": np.linspace(10, args.length, args.rows).round().astype(np.int64),
    }
    out: dict[str, Any] = {"shape": vars(args), "ms_per_step": {}}
    with tempfile.TemporaryDirectory() as tmp:
        entries = export_all(Path(tmp), args.layers, args.heads, args.embd, args.vocab, args.ctx)
        for mix, lengths in mixes.items():
            for c in CONTRACTS:
                out["ms_per_step"][f"{c}/{mix}"] = step_ms(entries[c], lengths, args.steps, args.repeats)
        if args.policies:
            from bench.engine_benchmarks import compare_policies

            out["policies"] = {}
            for c in CONTRACTS:
                res = compare_policies(entries[c], repeats=5, jobs=128, slots=args.rows, temperature=0.8)
                out["policies"][c] = {k: res[k] for k in ("throughput_ratio", "short_latency_ratio",
                                                          "throughput_ratio_by_pair", "short_latency_ratio_by_pair")}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
