"""CUDA check of the text engine on a GPT-2-small-sized model (random weights), against the memory-bandwidth
bound. Run through bench/gpu_check.sh on a machine with an NVIDIA GPU; ``--provider cpu --tiny`` is a dry run
of the same code path on a laptop (it proves the script works, not the GPU figures).

Decode is memory-bound: every step reads all weights once plus each row's KV cache, so a step cannot take
less than ``(weight bytes + KV bytes read) / HBM bandwidth``. The script reports, per batch size, the
engine's tokens/s, the seconds per engine step, that bound, and the fraction of it reached. The logits of
every row also cross PCIe each step (sampling runs on the host): ``B x vocab x 4`` bytes, reported too.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# HBM bandwidth in GB/s by GPU name (vendor data sheets); --hbm-gbps overrides.
HBM_GBPS = {"H200": 4800, "H100 SXM": 3350, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100 NVL": 3900,
            "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100-SXM4-40GB": 1555, "A100-PCIE-40GB": 1555,
            "L40S": 864, "L4": 300, "A10": 600, "T4": 320, "RTX 4090": 1008, "GH200": 4000}


def gpu_info() -> dict[str, Any]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    name, mem, driver = (x.strip() for x in out[0].split(","))
    gbps = next((v for k, v in sorted(HBM_GBPS.items(), key=lambda kv: -len(kv[0])) if k in name), None)
    return {"name": name, "memory": mem, "driver": driver, "hbm_gbps_datasheet": gbps}


def word_tokenizer(vocab: int) -> str:
    """A tokenizer that can decode any id of a random model (``t<id>`` words), as tokenizer.json text."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return str(tok.to_str())


def build_model(models_dir: Path, precision: str, n_layer: int, n_head: int, n_embd: int, vocab: int, ctx: int) -> Any:
    """Export a random GPT through the project's exporter (parity checked on the CPU) and return its entry."""
    import torch

    from genqueue.registry import ModelKind, Registry
    from genqueue_exporter.export import ExportJob, export_model, variant_version
    from genqueue_exporter.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab, n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=ctx, dropout=0.0))
    # The concat contract keeps the KV cache on the device between steps (the ragged default is CPU-oriented).
    job = ExportJob(kind=ModelKind.text, name="gpt2-small-random", version="1", model=model.eval(), source="random",
                    extra={"config": model.config.to_dict()}, tokenizer_json=word_tokenizer(vocab),
                    kv_contract="concat")
    export_model(job, models_dir, (precision,))  # type: ignore[arg-type]
    return Registry(models_dir).resolve(f"gpt2-small-random@{variant_version('1', precision)}")


def _kept(models_dir: Path, precision: str, dims: tuple[int, ...]) -> Any:
    """The model a previous run exported into ``models_dir``, or None; exits when that model has other
    dimensions than this run's (a --tiny export, say)."""
    from genqueue.registry import Registry, UnknownModel
    from genqueue_exporter.export import variant_version

    try:
        entry = Registry(models_dir).resolve(f"gpt2-small-random@{variant_version('1', precision)}")
    except UnknownModel:  # nothing exported there yet; a broken model folder raises its own error
        return None
    t = entry.manifest.text
    if t is None:
        return None
    have = (t.n_layer, t.n_head, t.n_head * t.head_dim, t.vocab_size, t.context_length)
    if have != dims:
        raise SystemExit(f"{models_dir} holds a model of other dimensions {have} than this run's {dims}: "
                         "pass another --models-dir")
    return entry


def bound(entry: Any, batch: int, mean_past: float, gbps: float) -> dict[str, float]:
    """The bandwidth floor of one decode step: all weights once, plus ``mean_past`` cached positions per row."""
    import numpy as np
    import onnx

    spec = entry.manifest.text
    item = 2 if spec.kv_dtype == "float16" else 4
    graph = onnx.load(str(entry.onnx_path), load_external_data=False).graph
    params = sum(int(np.prod(t.dims)) for t in graph.initializer)
    weight_bytes = params * item
    kv_bytes = batch * mean_past * spec.n_layer * 2 * spec.n_head * spec.head_dim * item
    step_s = (weight_bytes + kv_bytes) / (gbps * 1e9)
    return {"params": params, "weight_bytes": weight_bytes, "kv_bytes_per_step": kv_bytes, "bound_step_ms": step_s * 1e3,
            "bound_tokens_per_s": batch / step_s, "logits_bytes_per_step": batch * spec.vocab_size * 4}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_engine", description=__doc__)
    ap.add_argument("--provider", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--precision", default="fp16", choices=["fp16", "fp32"])
    ap.add_argument("--batches", default="1,2,4,8,16,32,64,128,256")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--hbm-gbps", type=float, default=None, help="default: from the GPU's name (data sheet)")
    ap.add_argument("--tiny", action="store_true", help="2 layers, d=128, vocab 1000: a CPU dry run")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--models-dir", type=Path, default=None,
                    help="keep the exported model here and reuse it on the next run (default: a temporary folder); "
                         "one folder per model size: --tiny runs need their own")
    ap.add_argument("--cprofile", action="store_true",
                    help="profile each batch size's run in Python (cProfile): where a step's wall time goes on the host")
    ap.add_argument("--ort-profile", action="store_true",
                    help="after each batch size's run, run it again under ONNX Runtime's profiler (bench/ort_profile.py)")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    if hasattr(ort, "preload_dlls") and args.provider == "cuda":
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels, when that is where they are
    from dataclasses import replace

    from bench.engine_benchmarks import engine_throughput
    from genqueue_worker.engine.text_engine import TextEngineConfig
    from genqueue_worker.engine.types import TextParams, TextRequest

    gpu = gpu_info()
    gbps = args.hbm_gbps or gpu.get("hbm_gbps_datasheet") or (50.0 if args.provider == "cpu" else None)
    if gbps is None:
        raise SystemExit(f"unknown GPU {gpu.get('name')!r}: pass --hbm-gbps")
    dims = (2, 2, 128, 1000, 256) if args.tiny else (12, 12, 768, 50257, 1024)
    out: dict[str, Any] = {"gpu": gpu, "hbm_gbps": gbps, "provider_requested": args.provider, "precision": args.precision,
                           "model": dict(zip(("n_layer", "n_head", "n_embd", "vocab", "ctx"), dims, strict=True)),
                           "onnxruntime": ort.__version__, "available_providers": ort.get_available_providers(),
                           "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        entry = _kept(args.models_dir, args.precision, dims) if args.models_dir else None
        if entry is None:
            entry = build_model(args.models_dir or Path(tmp), args.precision, *dims)
            out["export_s"] = round(time.perf_counter() - t0, 1)
        prompt = " ".join(f"t{1 + i}" for i in range(args.prompt_tokens))
        mean_past = args.prompt_tokens + args.new_tokens / 2
        base = TextEngineConfig(max_kv_bytes=16 << 30, max_tokens_per_step=1 << 16)
        for b in (int(x) for x in args.batches.split(",")):
            reqs = [TextRequest(f"g{i}", prompt, TextParams(max_new_tokens=args.new_tokens, temperature=1.0, seed=i,
                                                           ignore_eos=True)) for i in range(2 * b)]
            prof = cProfile.Profile() if args.cprofile else None
            if prof is not None:
                prof.enable()
            r = engine_throughput(entry, "continuous", slots=b, provider=args.provider, requests=reqs,
                                  config=replace(base, max_batch_size=b))
            if prof is not None:
                prof.disable()
            if args.provider == "cuda" and r["provider"] != "CUDAExecutionProvider":
                raise SystemExit(f"onnxruntime fell back to {r['provider']}: the CUDA libraries did not load")
            bnd = bound(entry, b, mean_past, gbps)
            step_ms = r["wall_s"] * 1e3 / max(1, r["steps"])
            row = {"batch": b, "tokens_per_s": r["tokens_per_s"], "wall_s": r["wall_s"], "steps": r["steps"],
                   "step_ms": round(step_ms, 3), "bound_step_ms": round(bnd["bound_step_ms"], 3),
                   "bound_tokens_per_s": round(bnd["bound_tokens_per_s"], 1),
                   "fraction_of_bound": round(r["tokens_per_s"] / bnd["bound_tokens_per_s"], 3),
                   "logits_mb_per_step": round(bnd["logits_bytes_per_step"] / 2**20, 2), "provider": r["provider"]}
            if prof is not None:
                row["cprofile_top"] = _top(prof)
                row["profiled"] = True  # the rates above were measured under cProfile
            if args.ort_profile:
                row["ort_profile"] = _ort_profile(entry, args.provider, replace(base, max_batch_size=b), reqs)
            out["runs"].append(row)
            out["weight_mb"] = round(bnd["weight_bytes"] / 2**20, 1)
            print(json.dumps(row), flush=True)
            # After every batch size: a run that its caller's timeout kills keeps what it measured.
            _write(args.out, out)
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _ort_profile(entry: Any, provider: str, config: Any, reqs: list[Any]) -> dict[str, Any]:
    from bench.engine_benchmarks import POLICIES, run_all
    from bench.ort_profile import profile_engine_run
    from genqueue_worker.engine.lanes import create_text_engine

    def run() -> Any:
        engine = create_text_engine(entry, provider, config, POLICIES["continuous"])
        run_all(engine, [])  # the warm-up of engine_throughput: its calls are in the profile too
        run_all(engine, reqs)
        return engine

    return profile_engine_run(run)


def _top(prof: cProfile.Profile, n: int = 15) -> list[dict[str, Any]]:
    """The ``n`` functions with the most time of their own (the warm-up run included), as rows."""
    st = pstats.Stats(prof)
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:n]  # type: ignore[attr-defined]
    return [{"function": f"{Path(f).name}:{line}:{name}", "calls": nc, "own_s": round(tt, 4), "cum_s": round(ct, 4)}
            for (f, line, name), (_, nc, tt, ct, _) in rows]


def _write(path: Path | None, out: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
