"""The jobs every scenario runs: one definition, so genqueue, the engine alone and the naive baseline
generate from the same prompts with the same sampling settings and seeds."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.engine_benchmarks import PROMPTS as BENCH_PROMPTS
from genqueue_worker.engine.types import ImageParams, ImageRequest, TextParams, TextRequest

# The API's defaults (temperature 0.8, no top-k/top-p); every scenario samples this way.
TEMPERATURE = 0.8
PROMPTS = BENCH_PROMPTS  # the engine benchmarks' prompts, so every scenario feeds the same text
NUM_CLASSES = 10


def text_inputs(n: int, min_new: int, max_new: int, seed: int = 0) -> list[dict[str, Any]]:
    """API ``input`` objects: max_new_tokens uniform in [min_new, max_new]; EOS ends a job early, as in
    production (the engine-only batch sweep is the one place that ignores EOS)."""
    rng = np.random.default_rng(seed)
    return [
        {"prompt": PROMPTS[i % len(PROMPTS)], "max_new_tokens": int(rng.integers(min_new, max_new + 1)),
         "temperature": TEMPERATURE, "seed": i + 1}
        for i in range(n)
    ]


def image_inputs(n: int) -> list[dict[str, Any]]:
    return [{"num_images": 1, "class_label": i % NUM_CLASSES, "seed": i + 1} for i in range(n)]


def text_request(job_id: str, inp: dict[str, Any], ignore_eos: bool = False) -> TextRequest:
    """What the worker builds from the same input (genqueue_worker.jobs.build_request's defaults)."""
    p = TextParams(max_new_tokens=int(inp["max_new_tokens"]), temperature=float(inp["temperature"]),
                   seed=int(inp["seed"]), ignore_eos=ignore_eos)
    return TextRequest(job_id, str(inp["prompt"]), p)


def image_request(job_id: str, inp: dict[str, Any]) -> ImageRequest:
    return ImageRequest(job_id, ImageParams(seed=int(inp["seed"]), num_images=int(inp["num_images"]),
                                            class_label=inp.get("class_label")))


def fixed_length_requests(n: int, new_tokens: int) -> list[TextRequest]:
    """``n`` jobs of exactly ``new_tokens`` tokens each (EOS ignored): the batch sweep's constant work."""
    return [text_request(f"sweep-{i}", {"prompt": PROMPTS[i % len(PROMPTS)], "max_new_tokens": new_tokens,
                                        "temperature": TEMPERATURE, "seed": i + 1}, ignore_eos=True)
            for i in range(n)]
