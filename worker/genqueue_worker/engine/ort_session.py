"""ONNX Runtime session creation shared by the text and image runners.

onnxruntime-gpu lists ``CUDAExecutionProvider`` as available even where CUDA or cuDNN cannot load, and then
silently runs on the CPU. So the provider we *asked for* means little: after creating the session we read
``session.get_providers()`` and log the one that actually runs; the runners choose their code paths (IO
binding on the device or host buffers) from that, never from the request.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("genqueue.worker.engine")

ProviderName = Literal["auto", "cuda", "cpu"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class SessionConfig:
    provider: str = "auto"  # "auto" (CUDA when onnxruntime offers it) | "cuda" | "cpu"
    intra_op_threads: int = 0  # 0: one per physical core (ORT's default); set lower to share the CPU
    inter_op_threads: int = 1  # graphs here are sequential chains; parallel executors only add overhead
    device_id: int = 0  # CUDA device
    graph_optimization: str = "all"  # "all" | "extended" | "basic" | "disabled"
    log_severity: int = 3  # ORT's own logs: 3 = errors only (the fallback warning is logged by us instead)
    allow_spinning: bool = True  # ORT worker threads busy-wait between ops; off frees cores for neighbours


def resolve_providers(provider: str, device_id: int = 0) -> list[Any]:
    import onnxruntime as ort

    if provider not in ("auto", "cuda", "cpu"):
        raise ValueError(f"provider must be 'auto', 'cuda' or 'cpu', not {provider!r}")
    available = ort.get_available_providers()
    want_cuda = provider == "cuda" or (provider == "auto" and CUDA in available)
    if not want_cuda:
        return [CPU]
    if CUDA not in available:
        raise RuntimeError(f"provider 'cuda' requested but onnxruntime offers only {available}")
    cuda_opts = {
        "device_id": str(device_id),
        # Batch sizes vary step to step; exhaustive search would re-benchmark convolutions for each shape.
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": "1",
    }
    return [(CUDA, cuda_opts), CPU]


def create_session(model_path: Path, cfg: SessionConfig, what: str) -> tuple[Any, str]:
    """Returns (session, provider that actually runs)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.intra_op_threads if cfg.intra_op_threads > 0 else 0
    so.inter_op_num_threads = max(1, cfg.inter_op_threads)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[cfg.graph_optimization]
    so.log_severity_level = cfg.log_severity
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if cfg.allow_spinning else "0")
    requested = resolve_providers(cfg.provider, cfg.device_id)
    sess = ort.InferenceSession(str(model_path), sess_options=so, providers=requested)
    actual = sess.get_providers()[0]
    asked = requested[0][0] if isinstance(requested[0], tuple) else requested[0]
    if actual != asked:
        log.warning(
            "%s: asked for %s but onnxruntime runs %s (CUDA/cuDNN libraries missing or no GPU); continuing on %s",
            what, asked, actual, actual,
        )
    log.info(
        "%s: session on %s (providers %s, intra_op_threads=%s, cpu_count=%s)",
        what, actual, sess.get_providers(), cfg.intra_op_threads or "default", os.cpu_count(),
    )
    return sess, actual
