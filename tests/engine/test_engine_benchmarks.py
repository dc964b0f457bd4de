"""The benchmark helpers the bench harness calls: they run and report consistent figures (tiny sizes)."""

from __future__ import annotations

from typing import Any

from bench.engine_benchmarks import compare_policies, image_host_ceiling, image_scaling, text_jobs


def test_text_jobs_are_reproducible_and_in_range() -> None:
    a, b = text_jobs(16, 8, 128, seed=1), text_jobs(16, 8, 128, seed=1)
    assert a == b and all(8 <= r.params.max_new_tokens <= 128 and r.params.ignore_eos for r in a)


def test_compare_policies_reports_both_and_does_the_same_work(models: dict[str, Any]) -> None:
    out = compare_policies(models["text"], jobs=12, slots=4, min_new=2, max_new=12)
    s, c = out["static"], out["continuous"]
    assert s["failed"] == c["failed"] == 0
    assert s["tokens"] == c["tokens"] == sum(r.params.max_new_tokens for r in text_jobs(12, 2, 12))
    assert c["useful_row_fraction"] == 1.0 and s["useful_row_fraction"] < 1.0
    assert c["steps"] < s["steps"]
    assert out["throughput_ratio"] > 0 and out["short_latency_ratio"] > 0


def test_image_scaling_runs(models: dict[str, Any]) -> None:
    out = image_scaling(models["image"], small=1, large=8, images=16)
    assert out["small"]["images"] == 16 and out["large"]["images"] == 16 and out["ratio"] > 0


def test_image_host_ceiling_times_the_engine_around_a_free_forward(models: dict[str, Any]) -> None:
    out = image_host_ceiling(models["image"], small=1, large=8, images=16)
    assert out["small"]["images"] == 64 and out["large"]["images"] == 16  # every job succeeded
    assert out["large"]["images_per_s"] > 0 and out["ratio"] > 0


def test_policy_ratios_are_the_medians_of_the_side_by_side_pairs(models: dict[str, Any]) -> None:
    import statistics

    out = compare_policies(models["text"], repeats=3, jobs=12, slots=4, min_new=2, max_new=12)
    assert len(out["throughput_ratio_by_pair"]) == len(out["short_latency_ratio_by_pair"]) == 3
    assert out["throughput_ratio"] == statistics.median(out["throughput_ratio_by_pair"])
    assert out["short_latency_ratio"] == statistics.median(out["short_latency_ratio_by_pair"])
    # The table's absolute figures are each policy's fastest run.
    assert out["static"]["wall_s"] == min(out["static"]["runs_wall_s"])
