"""What the last-token head saves in prefill: the ragged graph written with each row's last token's logits
[B,1,V] (what the exporter writes) against every position's [B,S,V] (earlier exports), through the worker's
runner (``OrtTextRunner.prefill``, which takes each row's last token either way).

    python -m bench.prefill                                # tiny-lm's shape (vocab 1882, 4 x 128)
    python -m bench.prefill --vocab 50257 --embd 256       # GPT-2's vocabulary on a small body

A GPT of the requested shape (random weights) is written both ways, the last-token graph is parity-checked
against the torch module, and each prompt batch is timed (best of ``--repeats`` rounds of ``--calls``).
Prompts are left-padded to a common length here, so every row computes the whole width.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SHAPES = ((1, 12), (9, 15), (32, 15), (32, 64))  # (prompts, tokens each)


def prefill_ms(runner: Any, batch: int, tokens: int, calls: int, repeats: int) -> float:
    ids = np.ones((batch, tokens), np.int64)
    mask = np.ones((batch, tokens), np.int64)
    pos = np.tile(np.arange(tokens, dtype=np.int64), (batch, 1))
    runner.prefill(ids, mask, pos)  # settle ORT's arena for this shape
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            runner.prefill(ids, mask, pos)
        best = min(best, (time.perf_counter() - t0) / calls)
    return round(best * 1000, 3)


def main(argv: list[str] | None = None) -> None:
    import onnxruntime as ort
    import torch

    from genqueue_exporter.gpt import GPT, GPTConfig
    from genqueue_exporter.gpt_ragged import build_ragged_onnx, ragged_parity
    from genqueue_worker.engine.ort_session import SessionConfig
    from genqueue_worker.engine.ort_text import OrtTextRunner
    from genqueue_worker.engine.runner import TextModelInfo

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=1882)
    ap.add_argument("--embd", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=args.vocab, n_layer=args.layers, n_head=args.heads, n_embd=args.embd, block_size=args.ctx)
    model = GPT(cfg).eval()
    info = TextModelInfo(args.vocab, args.layers, args.heads, args.embd // args.heads, args.ctx, 0, 0, 0, kv_contract="ragged")
    out: dict[str, Any] = {"shape": vars(args), "ms_per_call": {}, "logits_mb": {}}
    with tempfile.TemporaryDirectory() as tmp:
        runners = {}
        for name, every in (("last_token", False), ("all_positions", True)):
            path = Path(tmp) / f"{name}.onnx"
            build_ragged_onnx(model, path, all_logits=every)
            if not every:
                sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                out["parity"] = ragged_parity(model, sess, 1e-3)
            runners[name] = OrtTextRunner(path, info, SessionConfig(provider="cpu"))
        for b, s in SHAPES:
            key = f"{b}x{s}"
            out["ms_per_call"][key] = {name: prefill_ms(r, b, s, args.calls, args.repeats) for name, r in runners.items()}
            out["logits_mb"][key] = {"last_token": round(b * args.vocab * 4 / 2**20, 2),
                                     "all_positions": round(b * s * args.vocab * 4 / 2**20, 2)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
