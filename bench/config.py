"""Sizes of each benchmark mode. ``quick`` fits in under 5 minutes on 2 CPU cores, stack start-up included."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class BenchConfig:
    mode: str  # "quick" | "full" | "smoke"
    repeats: int  # engine measurements alternate and keep each variant's fastest run (shared machines)
    # engine: the text engine alone at each batch size, equal-length jobs, EOS ignored (constant work)
    text_batches: tuple[int, ...] = (1, 8, 32, 64)
    engine_new_tokens: int = 64  # tokens per job in the batch sweep
    engine_min_tokens: int = 4096  # at least this many tokens per batch-size measurement
    image_batches: tuple[int, ...] = (1, 16, 64, 256)
    engine_images: int = 2048  # images per image batch-size measurement
    torch_batches: tuple[int, ...] = (1, 32)  # ORT vs PyTorch eager at these batch sizes (text)
    torch_image_batches: tuple[int, ...] = (1, 64)
    # runs per PyTorch thread count: the eager baseline only gives engine.text.ort_vs_torch (no target), and at
    # batch 1 one text run takes ~12 s on a slow 2-core machine
    torch_repeats: int = 1
    # text engine lanes (worker/genqueue_worker/engine/lanes.py) measured beside the one-loop engine: batch-32 throughput and
    # continuous vs static; 0 = one lane per CPU core, at most 4
    lanes: int = 0
    # continuous vs static (the calibration workload of docs/design.md, "Benchmark definitions")
    continuous_jobs: int = 128
    continuous_slots: int = 32
    continuous_min_new: int = 8
    continuous_max_new: int = 128
    # Each policy keeps its fastest of this many alternating runs: a run takes ~0.5 s, and on a shared
    # machine two runs left the short-latency ratio swinging by +-0.05 between otherwise equal runs.
    continuous_repeats: int = 5
    # system and naive: the same N text jobs and N image jobs (one image each); the naive setup serves ~6 text
    # jobs/s on a 2-core machine, so N text jobs cost it about N/6 seconds
    system_text_jobs: int = 256
    system_image_jobs: int = 1024
    text_min_new: int = 16
    text_max_new: int = 96
    # system, naive, submit: alternating rounds; every ratio is the median over the rounds
    pairs: int = 3
    # empty tasks per run through one default Celery worker (system.image.vs_noop_celery)
    noop_tasks: int = 2000
    # full mode: a GPT-2-small-shaped random model (bench/gpt2.py) through the system and both naives;
    # 0 jobs = not run. Its naive PyTorch decodes ~10-40 tokens/s per core at batch 1.
    gpt2_jobs: int = 0
    gpt2_min_new: int = 16
    gpt2_max_new: int = 32
    # submit: bulk endpoint vs a per-job INSERT+COMMIT+.delay() loop
    submit_jobs: int = 2000
    # load: Poisson arrivals at these fractions of the measured text capacity
    load_fractions: tuple[float, ...] = (0.5, 0.8, 0.95)
    load_duration_s: float = 12.0
    stack_timeout_s: float = 180.0


QUICK = BenchConfig(mode="quick", repeats=3)
FULL = replace(
    QUICK, mode="full", repeats=3, torch_repeats=3, engine_min_tokens=16384, engine_images=8192, system_text_jobs=512,
    system_image_jobs=2048, submit_jobs=5000, load_duration_s=20.0, noop_tasks=5000, gpt2_jobs=24,
)
# Seconds, for tests: tiny sizes that still exercise every code path.
SMOKE = replace(
    QUICK, mode="smoke", repeats=1, text_batches=(1, 4), engine_new_tokens=8, engine_min_tokens=64,
    image_batches=(1, 8), engine_images=32, torch_batches=(1, 4), torch_image_batches=(1, 8), continuous_jobs=8,
    continuous_slots=4, continuous_min_new=2, continuous_max_new=12, continuous_repeats=1, system_text_jobs=8, system_image_jobs=8,
    text_min_new=4, text_max_new=8, submit_jobs=50, pairs=1, noop_tasks=20, load_fractions=(0.5,), load_duration_s=2.0,
)

MODES = {"quick": QUICK, "full": FULL, "smoke": SMOKE}
