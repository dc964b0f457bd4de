"""``continuous`` scenario: continuous vs static batching on the calibration workload of docs/design.md (128 jobs,
max_new_tokens uniform in 8-128, 32 slots), via ``bench.engine_benchmarks.compare_policies``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.config import BenchConfig
from bench.engine_bench import bench_lanes
from bench.engine_benchmarks import compare_policies, compare_prompt_cache
from bench.workload import TEMPERATURE
from genqueue.registry import ModelEntry
from genqueue_worker.engine.text_engine import TextEngineConfig


def run(cfg: BenchConfig, text: ModelEntry, log: Callable[[str], None] = print) -> dict[str, Any]:
    out = compare_policies(
        text, repeats=cfg.continuous_repeats, jobs=cfg.continuous_jobs, slots=cfg.continuous_slots,
        min_new=cfg.continuous_min_new, max_new=cfg.continuous_max_new, temperature=TEMPERATURE,
    )
    s, c = out["static"], out["continuous"]
    log(f"continuous {c['tokens_per_s']:.1f} tokens/s vs static {s['tokens_per_s']:.1f} "
        f"({out['throughput_ratio']}x); short-job median latency {c['short_latency_p50_ms']:.1f} vs "
        f"{s['short_latency_p50_ms']:.1f} ms ({out['short_latency_ratio']}x)")
    pc = compare_prompt_cache(text, repeats=cfg.continuous_repeats, jobs=cfg.continuous_jobs)
    out["prompt_cache"] = pc
    log(f"prompt cache on repeated templates: {pc['on']['tokens_per_s']:.1f} vs {pc['off']['tokens_per_s']:.1f} "
        f"tokens/s off ({pc['throughput_ratio']}x); median latency {pc['latency_ratio']}x")
    lanes = bench_lanes(cfg)
    if lanes > 1:
        ln = compare_policies(
            text, repeats=cfg.continuous_repeats, jobs=cfg.continuous_jobs, slots=cfg.continuous_slots,
            min_new=cfg.continuous_min_new, max_new=cfg.continuous_max_new, temperature=TEMPERATURE,
            config=TextEngineConfig(lanes=lanes),
        )
        out["lanes"] = {"lanes": lanes, **ln}
        log(f"with {lanes} lanes: continuous {ln['continuous']['tokens_per_s']:.1f} vs static "
            f"{ln['static']['tokens_per_s']:.1f} tokens/s ({ln['throughput_ratio']}x); short-job median latency "
            f"{ln['continuous']['short_latency_p50_ms']:.1f} vs {ln['static']['short_latency_p50_ms']:.1f} ms "
            f"({ln['short_latency_ratio']}x)")
    return out


def metrics(res: dict[str, Any]) -> dict[str, float]:
    s, c = res["static"], res["continuous"]
    return {
        "engine.text.continuous_vs_static": res["throughput_ratio"],
        "engine.text.short_latency_ratio": res["short_latency_ratio"],
        "engine.text.continuous_tokens_per_s": c["tokens_per_s"],
        "engine.text.static_tokens_per_s": s["tokens_per_s"],
        "engine.text.static_useful_row_fraction": s["useful_row_fraction"],
        **({"engine.text.prompt_cache.speedup": res["prompt_cache"]["throughput_ratio"],
            "engine.text.prompt_cache.latency_ratio": res["prompt_cache"]["latency_ratio"]}
           if "prompt_cache" in res else {}),
        **({"engine.text.lanes.continuous_vs_static": res["lanes"]["throughput_ratio"],
            "engine.text.lanes.short_latency_ratio": res["lanes"]["short_latency_ratio"],
            "engine.text.lanes.continuous_tokens_per_s": res["lanes"]["continuous"]["tokens_per_s"]}
           if "lanes" in res else {}),
    }
