"""``engine`` scenario: the engines alone, in process, and ORT against PyTorch eager on the same weights.

Text: tokens/s of the continuous-batching engine at each batch size (equal-length jobs, EOS ignored, so every
batch size does the same work). Images: images/s of the dynamic-batching engine (PNG encoding included, as
in production) and of the bare ORT forward. PyTorch: the modules from exporter/genqueue_exporter/gpt.py and dcgan.py loaded
with the ONNX weights (bench/torch_models.py checks their outputs against ORT before anything is timed),
running the same jobs at the same batch size: a static batch with a KV cache for text (all jobs have the
same length, so static batching wastes nothing here), one forward per batch for images.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from bench.config import BenchConfig
from bench.workload import TEMPERATURE, fixed_length_requests, image_inputs, image_request
from genqueue.registry import ModelEntry
from genqueue_worker.engine.benchmarks import engine_throughput, image_host_ceiling
from genqueue_worker.engine.image_engine import ImageEngine, ImageEngineConfig
from genqueue_worker.engine.text_engine import TextEngineConfig
from genqueue_worker.engine.types import ImageRequest, TextRequest


def best_of(repeats: int, fn: Callable[[], dict[str, Any]], key: str = "wall_s") -> dict[str, Any]:
    """The fastest of ``repeats`` runs: on a shared machine the slow runs measure the neighbours."""
    runs = [fn() for _ in range(max(1, repeats))]
    best = min(runs, key=lambda r: float(r[key]))
    return {**best, "runs_" + key: [r[key] for r in runs]}


# -- text ------------------------------------------------------------------------------------------------
def sweep_jobs(cfg: BenchConfig, batch: int) -> int:
    return max(2 * batch, math.ceil(cfg.engine_min_tokens / cfg.engine_new_tokens))


def bench_lanes(cfg: BenchConfig) -> int:
    return cfg.lanes or min(4, os.cpu_count() or 1)


def ort_text(entry: ModelEntry, reqs: list[TextRequest], batch: int, config: TextEngineConfig | None = None) -> dict[str, Any]:
    base = config or TextEngineConfig()
    return engine_throughput(entry, "continuous", slots=batch, requests=reqs, config=replace(base, max_batch_size=batch))


def torch_text(model: Any, tokenizer: Any, reqs: list[TextRequest], batch: int, threads: int,
               prepend_bos: bool = False, bos: int = 0) -> dict[str, Any]:
    """HF-generate-style static batches of ``batch`` jobs: left-padded prefill, then one token per step
    with the KV cache, sampling softmax(logits / T) per row; every job runs its max_new_tokens."""
    import torch

    from genqueue.tokens import encode_prompt
    from genqueue_exporter.gpt import position_ids_from_mask

    torch.set_num_threads(threads)
    pad = 0
    tokens = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        gen = torch.Generator().manual_seed(0)
        for start in range(0, len(reqs), batch):
            chunk = reqs[start : start + batch]
            prompts = [encode_prompt(tokenizer, r.prompt, bos, prepend_bos) for r in chunk]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # [B,S] left-padded
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])  # [B,S]
            past = model.empty_past(len(chunk))
            cur, pos = ids, position_ids_from_mask(mask, width)
            for _ in range(max(r.params.max_new_tokens for r in chunk)):
                logits, *past = model(cur, mask, pos, *past)
                probs = torch.softmax(logits[:, -1] / TEMPERATURE, -1)  # [B,V]
                cur = torch.multinomial(probs, 1, generator=gen)  # [B,1]
                mask = torch.cat([mask, torch.ones(len(chunk), 1, dtype=mask.dtype)], 1)
                pos = pos[:, -1:] + 1
                tokens += len(chunk)
    wall = time.perf_counter() - t0
    return {"batch": batch, "threads": threads, "tokens": tokens, "wall_s": round(wall, 4),
            "tokens_per_s": round(tokens / wall, 1)}


# -- images ----------------------------------------------------------------------------------------------
def ort_images(entry: ModelEntry, reqs: Sequence[ImageRequest], batch: int) -> dict[str, Any]:
    """The image engine (dynamic batching, PNG encoding on its pool) on ``reqs``, one image each."""
    engine = ImageEngine(entry, "cpu", ImageEngineConfig(max_batch_size=batch, max_queue_delay_ms=0))
    engine.run_all(list(reqs[: min(8, len(reqs))]))  # warm ORT and the encoder pool
    t0 = time.perf_counter()
    results = engine.run_all(list(reqs))
    wall = time.perf_counter() - t0
    engine.stop()
    ok = sum(r.status == "succeeded" for r in results)
    return {"batch": batch, "images": ok, "wall_s": round(wall, 4), "images_per_s": round(ok / wall, 1),
            "forwards": engine.forwards}


def _latents(n: int, latent: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, latent)).astype(np.float32), (np.arange(n) % classes).astype(np.int64)


def ort_forward(entry: ModelEntry, images: int, batch: int, parts: int = 0) -> dict[str, Any]:
    """The image runner's forward (no encoding), ``images`` images in batches of ``batch``: one ORT run, or on
    the CPU from 8 images one single-threaded sub-batch per core (``parts`` 1: always one run)."""
    from genqueue_worker.engine.ort_image import OrtImageRunner
    from genqueue_worker.engine.ort_session import SessionConfig
    from genqueue_worker.engine.runner import ImageModelInfo

    spec = entry.manifest.image
    assert spec is not None
    runner = OrtImageRunner(entry.onnx_path, ImageModelInfo.from_spec(spec), SessionConfig(provider="cpu"), parts=parts)
    z, labels = _latents(images, spec.latent_size, spec.num_classes)
    runner.forward(z[:batch], labels[:batch])
    t0 = time.perf_counter()
    for s in range(0, images, batch):
        runner.forward(z[s : s + batch], labels[s : s + batch])
    wall = time.perf_counter() - t0
    runner.close()
    return {"batch": batch, "images": images, "wall_s": round(wall, 4), "images_per_s": round(images / wall, 1),
            "parts": runner.parts}


def gan_flops_per_image(cfg: Any) -> float:
    """FLOPs (2 x multiply-adds) of one dcgan.Generator forward: the projection and the three transposed
    convolutions (Cin x Cout x k x k per input pixel); BatchNorm is folded at export, activations are ignored."""
    g = cfg.ngf
    project = (cfg.latent_size + cfg.embed_dim) * 4 * g * 16
    convs = 4 * g * 2 * g * 16 * 4 * 4 + 2 * g * g * 16 * 8 * 8 + g * cfg.channels * 16 * 16 * 16
    return 2.0 * (project + convs)


def gemm_gflops(n: int = 1024, repeats: int = 5) -> float:
    """This machine's fp32 matrix-multiply rate (numpy's BLAS, all cores): the compute ceiling any batch
    size of a compute-bound forward can approach."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    a @ b  # noqa: B018  (warm the BLAS threads)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b  # noqa: B018
        best = min(best, time.perf_counter() - t0)
    return round(2.0 * n**3 / best / 1e9, 1)


def torch_forward(model: Any, images: int, batch: int, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    cfg = model.config
    z, labels = _latents(images, cfg.latent_size, cfg.num_classes)
    zt, lt = torch.from_numpy(z), torch.from_numpy(labels)
    with torch.inference_mode():
        model(zt[:batch], lt[:batch])
        t0 = time.perf_counter()
        for s in range(0, images, batch):
            model(zt[s : s + batch], lt[s : s + batch])
        wall = time.perf_counter() - t0
    return {"batch": batch, "threads": threads, "images": images, "wall_s": round(wall, 4),
            "images_per_s": round(images / wall, 1)}


def _best_threads(fn: Callable[[int], dict[str, Any]], repeats: int) -> dict[str, Any]:
    """PyTorch gets its best intra-op thread count (its default and 1), so the baseline is never weakened."""
    import torch

    default = torch.get_num_threads()
    runs = [best_of(repeats, lambda t=t: fn(t)) for t in sorted({default, 1})]  # type: ignore[misc]
    torch.set_num_threads(default)
    return min(runs, key=lambda r: float(r["wall_s"]))


# -- the scenario ----------------------------------------------------------------------------------------
def run(cfg: BenchConfig, text: ModelEntry, image: ModelEntry, log: Callable[[str], None] = print) -> dict[str, Any]:
    from tokenizers import Tokenizer

    from bench import torch_models

    out: dict[str, Any] = {"text": {"ort": {}, "torch": {}},
                           "image": {"engine": {}, "ort_forward": {}, "ort_forward_one_run": {}, "torch": {}}}
    for b in cfg.text_batches:
        reqs = fixed_length_requests(sweep_jobs(cfg, b), cfg.engine_new_tokens)
        r = best_of(cfg.repeats, lambda reqs=reqs, b=b: ort_text(text, reqs, b))  # type: ignore[misc]
        out["text"]["ort"][str(b)] = r
        log(f"engine text  batch {b:>3}: {r['tokens_per_s']:>9.1f} tokens/s (ORT engine)")
    lanes = bench_lanes(cfg)
    if lanes > 1:
        b = max(x for x in cfg.text_batches if x <= 32)
        reqs = fixed_length_requests(sweep_jobs(cfg, b), cfg.engine_new_tokens)
        r = best_of(cfg.repeats, lambda reqs=reqs, b=b: ort_text(text, reqs, b, TextEngineConfig(lanes=lanes)))  # type: ignore[misc]
        out["text"]["lanes"] = {"lanes": lanes, "batch": b, **r}
        log(f"engine text  batch {b:>3}: {r['tokens_per_s']:>9.1f} tokens/s (ORT engine, {lanes} lanes)")
    gpt = torch_models.load_gpt(text)
    gen = torch_models.load_generator(image)
    out["parity"] = {"text_max_abs_diff": torch_models.verify_gpt(gpt, text),
                     "image_max_abs_diff": torch_models.verify_generator(gen, image)}
    if max(out["parity"].values()) > 1e-3:
        raise RuntimeError(f"torch and ORT disagree ({out['parity']}); refusing to time PyTorch")
    assert text.tokenizer_path is not None and text.manifest.text is not None
    tok = Tokenizer.from_file(str(text.tokenizer_path))
    bos, prepend = text.manifest.text.bos_token_id, bool(getattr(text.manifest.text, "prepend_bos", False))
    for b in cfg.torch_batches:
        reqs = fixed_length_requests(sweep_jobs(cfg, b), cfg.engine_new_tokens)
        r = _best_threads(lambda t, reqs=reqs, b=b: torch_text(gpt, tok, reqs, b, t, prepend, bos), cfg.torch_repeats)  # type: ignore[misc]
        out["text"]["torch"][str(b)] = r
        if str(b) not in out["text"]["ort"]:
            out["text"]["ort"][str(b)] = best_of(cfg.repeats, lambda reqs=reqs, b=b: ort_text(text, reqs, b))  # type: ignore[misc]
        log(f"engine text  batch {b:>3}: {r['tokens_per_s']:>9.1f} tokens/s (PyTorch eager, {r['threads']} threads)")
    reqs_img = [image_request(f"img-{i}", inp) for i, inp in enumerate(image_inputs(cfg.engine_images))]
    for b in cfg.image_batches:
        r = best_of(cfg.repeats, lambda b=b: ort_images(image, reqs_img, b))  # type: ignore[misc]
        f = best_of(cfg.repeats, lambda b=b: ort_forward(image, cfg.engine_images, b))  # type: ignore[misc]
        # The same forward as one multi-threaded ORT run, never split: what the per-core split adds.
        f1 = best_of(cfg.repeats, lambda b=b: ort_forward(image, cfg.engine_images, b, parts=1))  # type: ignore[misc]
        out["image"]["engine"][str(b)] = r
        out["image"]["ort_forward"][str(b)] = f
        out["image"]["ort_forward_one_run"][str(b)] = f1
        log(f"engine image batch {b:>3}: {r['images_per_s']:>9.1f} images/s (engine, PNG included), "
            f"{f['images_per_s']:.1f} forward only ({f['parts']} parts), {f1['images_per_s']:.1f} as one ORT run")
    for b in cfg.torch_image_batches:
        r = _best_threads(lambda t, b=b: torch_forward(gen, cfg.engine_images, b, t), cfg.torch_repeats)  # type: ignore[misc]
        out["image"]["torch"][str(b)] = r
        if str(b) not in out["image"]["ort_forward"]:
            out["image"]["ort_forward"][str(b)] = best_of(cfg.repeats, lambda b=b: ort_forward(image, cfg.engine_images, b))  # type: ignore[misc]
        log(f"engine image batch {b:>3}: {r['images_per_s']:>9.1f} images/s (PyTorch forward, {r['threads']} threads)")
    # The rate no device can take the engine past: the same jobs around a forward that costs nothing.
    lo_b, hi_b = min(cfg.image_batches), max(b for b in cfg.image_batches if b <= 64)
    hc = image_host_ceiling(image, small=lo_b, large=hi_b, images=cfg.engine_images // 4, repeats=cfg.repeats)
    out["image"]["host_ceiling"] = hc
    log(f"engine image host ceiling (free forward): {hc['small']['images_per_s']:.1f} images/s at batch {lo_b}, "
        f"{hc['large']['images_per_s']:.1f} at batch {hi_b} ({hc['ratio']}x)")
    # Why the GAN's batch gain is small on a CPU: how close batch 1 already is to the machine's GEMM rate.
    flops = gan_flops_per_image(gen.config)
    out["image"]["compute"] = {
        "mflop_per_image": round(flops / 1e6, 2),
        "gemm_gflops": gemm_gflops(),
        "forward_gflops": {b: round(f["images_per_s"] * flops / 1e9, 1) for b, f in out["image"]["ort_forward"].items()},
    }
    c = out["image"]["compute"]
    log(f"engine image compute: {c['mflop_per_image']} MFLOP/image; forward GFLOP/s {c['forward_gflops']}; "
        f"fp32 GEMM on this machine {c['gemm_gflops']} GFLOP/s")
    return out


def metrics(res: dict[str, Any]) -> dict[str, float]:
    """The flat ``engine.*`` keys of latest.json from the raw results."""
    m: dict[str, float] = {}
    ort, tt = res["text"]["ort"], res["text"]["torch"]
    for b, r in ort.items():
        m[f"engine.text.tokens_per_s.b{b}"] = r["tokens_per_s"]
    lo, hi = ("1", "32") if {"1", "32"} <= set(ort) else (str(min(map(int, ort))), str(max(map(int, ort))))
    m["engine.text.batch_gain"] = round(ort[hi]["tokens_per_s"] / ort[lo]["tokens_per_s"], 2)
    ln = res["text"].get("lanes")
    if ln:
        m["engine.text.lanes"] = ln["lanes"]
        m[f"engine.text.tokens_per_s.b{ln['batch']}_lanes"] = ln["tokens_per_s"]
        m["engine.text.batch_gain_lanes"] = round(ln["tokens_per_s"] / ort[lo]["tokens_per_s"], 2)
    for b, r in tt.items():
        m[f"engine.text.torch_tokens_per_s.b{b}"] = r["tokens_per_s"]
        m[f"engine.text.ort_vs_torch.b{b}"] = round(ort[b]["tokens_per_s"] / r["tokens_per_s"], 2)
    top = str(max(map(int, tt)))
    m["engine.text.ort_vs_torch"] = m[f"engine.text.ort_vs_torch.b{top}"]
    eng, fwd, ti = res["image"]["engine"], res["image"]["ort_forward"], res["image"]["torch"]
    for b in eng:
        m[f"engine.image.images_per_s.b{b}"] = eng[b]["images_per_s"]
        m[f"engine.image.forward_images_per_s.b{b}"] = fwd[b]["images_per_s"]
    lo, hi = ("1", "64") if {"1", "64"} <= set(eng) else (str(min(map(int, eng))), str(max(map(int, eng))))
    m["engine.image.batch_gain"] = round(eng[hi]["images_per_s"] / eng[lo]["images_per_s"], 2)
    m["engine.image.forward_batch_gain"] = round(fwd[hi]["images_per_s"] / fwd[lo]["images_per_s"], 2)
    for b, r in ti.items():
        m[f"engine.image.torch_images_per_s.b{b}"] = r["images_per_s"]
        m[f"engine.image.ort_vs_torch.b{b}"] = round(fwd[b]["images_per_s"] / r["images_per_s"], 2)
    m["engine.image.ort_vs_torch"] = m[f"engine.image.ort_vs_torch.b{max(map(int, ti))}"]
    hc = res["image"].get("host_ceiling")
    if hc:
        m["engine.image.host_ceiling_gain"] = hc["ratio"]
        m["engine.image.host_ceiling_images_per_s"] = hc["large"]["images_per_s"]
    comp = res["image"].get("compute")
    if comp:
        m["machine.gemm_gflops"] = comp["gemm_gflops"]
        for b, v in comp["forward_gflops"].items():
            m[f"engine.image.forward_gflops.b{b}"] = v
    m["engine.parity.text_max_abs_diff"] = res["parity"]["text_max_abs_diff"]
    m["engine.parity.image_max_abs_diff"] = res["parity"]["image_max_abs_diff"]
    return m
