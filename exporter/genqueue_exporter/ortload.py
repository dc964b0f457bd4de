"""Loading an exported model with onnxruntime, without importing torch (the samples and verify commands
run where torch may be absent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genqueue_exporter.errors import ExportError


def ort_session(path: Path, threads: int = 0) -> Any:
    """A CPU session for ``path``; a file onnxruntime cannot load is a one-line ExportError."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # onnxruntime-gpu warns about the missing CUDA provider on every load
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{path}: onnxruntime cannot load it ({first})") from e
