"""Inference engines: continuous-batching text generation and dynamically batched image generation.

Nothing here imports torch (invariant 5); onnxruntime is imported only when a runner is created.
"""

from genqueue_worker.engine.image_engine import ImageEngine, ImageEngineConfig
from genqueue_worker.engine.loader import EngineConfigs, engine_configs, load_engine
from genqueue_worker.engine.text_engine import EngineStats, TextEngine, TextEngineConfig
from genqueue_worker.engine.textproc import count_prompt_tokens, load_tokenizer
from genqueue_worker.engine.types import (
    EncodedImage,
    Engine,
    ErrorCode,
    ImageParams,
    ImageRequest,
    JobResult,
    TextParams,
    TextRequest,
)

__all__ = [
    "EncodedImage",
    "Engine",
    "EngineConfigs",
    "EngineStats",
    "ErrorCode",
    "ImageEngine",
    "ImageEngineConfig",
    "ImageParams",
    "ImageRequest",
    "JobResult",
    "TextEngine",
    "TextEngineConfig",
    "TextParams",
    "TextRequest",
    "count_prompt_tokens",
    "engine_configs",
    "load_engine",
    "load_tokenizer",
]
