"""Inference engines: continuous-batching text generation and dynamically batched image generation.

Nothing here imports torch (invariant 5); onnxruntime is imported only when a runner is created. The
messages between the worker and the engines (requests, results, error codes) are in ``types``.
"""

from genqueue_worker.engine.image_engine import ImageEngine, ImageEngineConfig
from genqueue_worker.engine.loader import EngineConfigs, engine_configs, load_engine
from genqueue_worker.engine.text_engine import EngineStats, TextEngine, TextEngineConfig
from genqueue_worker.engine.textproc import count_prompt_tokens, load_tokenizer
from genqueue_worker.engine.types import Engine, JobResult

__all__ = [
    "Engine",
    "EngineConfigs",
    "EngineStats",
    "ImageEngine",
    "ImageEngineConfig",
    "JobResult",
    "TextEngine",
    "TextEngineConfig",
    "count_prompt_tokens",
    "engine_configs",
    "load_engine",
    "load_tokenizer",
]
