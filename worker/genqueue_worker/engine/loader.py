"""``load_engine``: one engine for one model folder, chosen by the manifest's kind; ``engine_configs``: the
engines' configuration from the settings, in one place."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from genqueue.registry import ModelEntry, ModelKind
from genqueue.settings import Settings
from genqueue_worker.engine.image_engine import ImageEngine, ImageEngineConfig
from genqueue_worker.engine.lanes import LanedTextEngine, create_text_engine
from genqueue_worker.engine.text_engine import TextEngine, TextEngineConfig

ConfigT = TypeVar("ConfigT", TextEngineConfig, ImageEngineConfig)


@dataclass(frozen=True)
class EngineConfigs:
    text: TextEngineConfig
    image: ImageEngineConfig

    def for_kind(self, kind: ModelKind) -> TextEngineConfig | ImageEngineConfig:
        return self.text if kind is ModelKind.text else self.image


def engine_configs(settings: Settings) -> EngineConfigs:
    """The text and image engine configurations the settings describe (GENQUEUE_TEXT_*, GENQUEUE_IMAGE_*,
    GENQUEUE_ORT_*)."""
    text = TextEngineConfig(
        max_batch_size=settings.text_max_running, max_tokens_per_step=settings.text_max_tokens_per_step,
        lanes=settings.text_lanes, prefill_ahead=settings.text_prefill_ahead,
        prompt_cache_mb=settings.text_prompt_cache_mb,
    )
    image = ImageEngineConfig(
        max_batch_size=settings.image_max_batch_size, max_queue_delay_ms=settings.image_max_queue_delay_ms,
        forward_parts=settings.image_forward_parts, encode_threads=settings.image_encode_threads,
    )
    return EngineConfigs(_ort(text, settings), _ort(image, settings))


def _ort(config: ConfigT, settings: Settings) -> ConfigT:
    # ORT's spinning pool threads would busy-wait on the core the glue threads need: ort_allow_spinning is
    # off by default.
    return replace(config, intra_op_threads=settings.ort_threads, allow_spinning=settings.ort_allow_spinning)


def _with(config: ConfigT, kind: str, overrides: dict[str, Any]) -> ConfigT:
    known = {f.name for f in fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown {kind} engine option(s) {unknown}; known: {sorted(known)}")
    return replace(config, **overrides)


def load_engine(
    entry: ModelEntry,
    provider: str = "auto",
    config: TextEngineConfig | ImageEngineConfig | None = None,
    **overrides: Any,
) -> TextEngine | LanedTextEngine | ImageEngine:
    """Create (not start) the engine for ``entry`` from ``config`` (the kind's defaults when None), with
    ``overrides`` of its fields, e.g. ``load_engine(entry, "cpu", max_batch_size=16)``. The ORT session is
    created here, so call it in the process (after any fork) that will run the model."""
    if entry.manifest.kind is ModelKind.text:
        text = config if isinstance(config, TextEngineConfig) else TextEngineConfig()
        return create_text_engine(entry, provider, _with(text, "text", overrides))
    image = config if isinstance(config, ImageEngineConfig) else ImageEngineConfig()
    return ImageEngine(entry, provider, _with(image, "image", overrides))
