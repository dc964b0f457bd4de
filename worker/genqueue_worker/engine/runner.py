"""Runner protocols: the engines decide what to run, runners execute it (ORT sessions or test fakes).

Runners are not thread-safe; each engine calls its runner from its own loop thread only. ``ort_runner``
builds the ONNX Runtime runner of a model folder (ort_text.py, ort_image.py run the graphs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from genqueue.registry import ImageSpec, ModelEntry, ModelKind, TextSpec
from genqueue_worker.engine.kv_cache import KVBlock, KVCache


@dataclass(frozen=True)
class TextModelInfo:
    """What the text engine needs to know about a model (from the manifest's ``text`` section)."""

    vocab_size: int  # logits width
    n_layer: int  # the graph has 2 x n_layer past/present tensors
    n_head: int  # H in [B,H,P,D]
    head_dim: int  # D in [B,H,P,D]
    context_length: int  # prompt + generated tokens must fit
    bos_token_id: int  # fed for an empty prompt
    eos_token_id: int  # ends a candidate with finish_reason "eos"
    pad_token_id: int  # fed to static batching's finished rows and to left padding
    kv_dtype: str = "float32"  # cache element type
    kv_contract: str | None = None  # what the manifest says the graph returns; None: take the graph's word

    @classmethod
    def from_spec(cls, t: TextSpec) -> TextModelInfo:
        return cls(
            t.vocab_size, t.n_layer, t.n_head, t.head_dim, t.context_length,
            t.bos_token_id, t.eos_token_id, t.pad_token_id, t.kv_dtype, t.kv_contract,
        )

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of cache one token of one row holds (k and v, every layer)."""
        return 2 * self.n_layer * self.n_head * self.head_dim * np.dtype(self.kv_dtype).itemsize


@dataclass(frozen=True)
class ImageModelInfo:
    """From the manifest's ``image`` section."""

    latent_size: int  # z is float32 [B, latent_size]
    num_classes: int  # 0: unconditional (no class_label input)
    channels: int  # output C in [B,C,H,W]
    height: int
    width: int
    output_range: tuple[float, float] = (-1.0, 1.0)  # pixel values map linearly from this to 0..255

    @classmethod
    def from_spec(cls, s: ImageSpec) -> ImageModelInfo:
        return cls(s.latent_size, s.num_classes, s.channels, s.height, s.width, tuple(s.output_range))  # type: ignore[arg-type]


class TextRunner(Protocol):
    info: TextModelInfo
    provider: str  # the execution provider that actually runs (after any silent fallback)

    def new_cache(self) -> KVCache:
        """An empty batch cache of the kind this runner's ``decode`` works on."""
        ...

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> tuple[np.ndarray, KVBlock]:
        """Left-padded prompts [B,S] (mask [B,S], positions [B,S]) -> (last-position logits [B,V], KV rows)."""
        ...

    def decode(self, cache: KVCache, input_ids: np.ndarray) -> np.ndarray:
        """One step for every row of ``cache``: input_ids [rows,1] -> logits [rows,V].

        Positions and the attention mask follow from ``cache.lens``. The cache advances (P+1) only when the
        call succeeds, so a failed step can be retried. The logits may be a view of a buffer that the next
        call reuses: use them before decoding again.
        """
        ...


class ImageRunner(Protocol):
    info: ImageModelInfo
    provider: str

    def forward(self, z: np.ndarray, class_label: np.ndarray | None) -> np.ndarray:
        """z float32 [B,latent], class_label int64 [B] (conditional models) -> images float32 [B,C,H,W]."""
        ...


def ort_runner(entry: ModelEntry | None, kind: ModelKind, provider: str, config: Any) -> Any:
    """The ONNX Runtime runner for a model folder of ``kind``, with the session options of an engine's
    ``config`` (a TextEngineConfig or ImageEngineConfig). onnxruntime is imported here, not before."""
    spec = None if entry is None else entry.manifest.text if kind is ModelKind.text else entry.manifest.image
    if entry is None or spec is None:
        raise ValueError(f"the {kind.value} engine needs a {kind.value} ModelEntry or a runner")
    from genqueue_worker.engine.ort_session import SessionConfig

    session = SessionConfig(provider, intra_op_threads=config.intra_op_threads, allow_spinning=config.allow_spinning)
    if isinstance(spec, TextSpec):
        from genqueue_worker.engine.ort_text import OrtTextRunner

        return OrtTextRunner(entry.onnx_path, TextModelInfo.from_spec(spec), session, trim_slack=config.trim_slack)
    from genqueue_worker.engine.ort_image import OrtImageRunner

    return OrtImageRunner(entry.onnx_path, ImageModelInfo.from_spec(spec), session, parts=config.forward_parts)
