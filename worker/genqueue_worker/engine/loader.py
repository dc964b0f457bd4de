"""``load_engine``: one engine for one model folder, chosen by the manifest's kind."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from genqueue.registry import ModelEntry, ModelKind
from genqueue_worker.engine.image_engine import ImageEngine, ImageEngineConfig
from genqueue_worker.engine.lanes import LanedTextEngine, create_text_engine
from genqueue_worker.engine.text_engine import TextEngine, TextEngineConfig


def _config(cls: Any, kind: str, options: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown {kind} engine option(s) {unknown}; known: {sorted(known)}")
    return cls(**options)


def load_engine(entry: ModelEntry, provider: str = "auto", **config: Any) -> TextEngine | LanedTextEngine | ImageEngine:
    """Create (not start) the engine for ``entry``. ``config`` holds TextEngineConfig or ImageEngineConfig
    fields, e.g. ``load_engine(entry, "cpu", max_batch_size=16)``; the ORT session is created here, so call
    it in the process (after any fork) that will run the model."""
    if entry.manifest.kind is ModelKind.text:
        return create_text_engine(entry, provider, _config(TextEngineConfig, "text", config))
    return ImageEngine(entry, provider, _config(ImageEngineConfig, "image", config))
