"""ONNX Runtime image runner: one forward of the generator per batch (z, class_label -> images).

On the CPU a batch of at least ``2 * MIN_PART`` images runs as ``parts`` sub-batches at once, each on one
thread of a second, single-threaded session. ONNX Runtime's CPU ConvTranspose runs image by image and
spreads each image's small GEMMs over the intra-op threads, so a multi-threaded forward of 64 images was
barely faster than a single-threaded one (9.3k against 9.1k images/s on 2 cores), while two single-threaded
halves side by side made 16.6k (bench/FINDINGS.md, item 13). Small batches keep the multi-threaded session,
which is the faster one there (8.6k against 6.5k images/s at batch 1). Each image's pixels do not depend on
the split: the tests compare split, unsplit and single-image forwards bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from genqueue_worker.engine.ort_session import CPU, SessionConfig, create_session
from genqueue_worker.engine.runner import ImageModelInfo

MIN_PART = 4  # images per sub-batch: below 8 images one multi-threaded run was faster (measured on 2 cores)


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class OrtImageRunner:
    def __init__(self, model_path: Path, info: ImageModelInfo, session: SessionConfig | None = None,
                 parts: int = 0) -> None:
        """``parts``: sub-batches a large CPU forward runs as (0: as many as the session's intra-op threads,
        one per usable core by default; 1: never split). Ignored on CUDA."""
        cfg = session or SessionConfig()
        self.info = info
        self.session, self.provider = create_session(model_path, cfg, f"image model {model_path}")
        names = {i.name for i in self.session.get_inputs()}
        need = {"z", "class_label"} if info.num_classes else {"z"}
        if not need <= names or "images" not in {o.name for o in self.session.get_outputs()}:
            raise ValueError(f"{model_path}: graph does not follow the image contract (inputs {sorted(names)})")
        if parts < 0:
            raise ValueError("parts must be >= 0")
        self.parts = 1
        self._single: Any = None
        self._pool: ThreadPoolExecutor | None = None
        if self.provider == CPU:
            self.parts = parts or cfg.intra_op_threads or usable_cores()
        if self.parts > 1:
            self._single, _ = create_session(model_path, replace(cfg, intra_op_threads=1), f"image model {model_path} (per-part)")
            # The calling thread runs the first part itself.
            self._pool = ThreadPoolExecutor(self.parts - 1, thread_name_prefix="image-part")

    def forward(self, z: np.ndarray, class_label: np.ndarray | None) -> np.ndarray:
        # Plain run() also on CUDA: the images come back to the host for encoding anyway, and z is tiny.
        z = np.ascontiguousarray(z, dtype=np.float32)
        if self.info.num_classes:
            if class_label is None:
                raise ValueError("conditional model needs class_label")
            class_label = np.ascontiguousarray(class_label, dtype=np.int64)
        else:
            class_label = None  # the graph has no such input
        n = min(self.parts, z.shape[0] // MIN_PART)
        if n < 2 or self._pool is None:
            return self._run(self.session, z, class_label)
        bounds = np.linspace(0, z.shape[0], n + 1).astype(int).tolist()
        spans = list(zip(bounds[:-1], bounds[1:], strict=True))
        rest = [
            self._pool.submit(self._run, self._single, z[a:b], None if class_label is None else class_label[a:b])
            for a, b in spans[1:]
        ]
        a, b = spans[0]
        first = self._run(self._single, z[a:b], None if class_label is None else class_label[a:b])
        return np.concatenate([first, *[f.result() for f in rest]])  # result() re-raises a part's error

    def _run(self, session: Any, z: np.ndarray, class_label: np.ndarray | None) -> np.ndarray:
        feeds: dict[str, Any] = {"z": z}
        if class_label is not None:
            feeds["class_label"] = class_label
        return np.asarray(session.run(["images"], feeds)[0])  # [B,C,H,W]

    def warmup(self, batch_sizes: Sequence[int]) -> None:
        for b in sorted(set(batch_sizes)):
            z = np.zeros((b, self.info.latent_size), np.float32)
            labels = np.zeros(b, np.int64) if self.info.num_classes else None
            self.forward(z, labels)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
