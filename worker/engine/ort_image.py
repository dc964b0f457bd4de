"""ONNX Runtime image runner: one forward of the generator per batch (z, class_label -> images)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genqueue_worker.engine.ort_session import SessionConfig, create_session
from genqueue_worker.engine.runner import ImageModelInfo


class OrtImageRunner:
    def __init__(self, model_path: Path, info: ImageModelInfo, session: SessionConfig | None = None) -> None:
        self.info = info
        self.session, self.provider = create_session(model_path, session or SessionConfig(), f"image model {model_path}")
        names = {i.name for i in self.session.get_inputs()}
        need = {"z", "class_label"} if info.num_classes else {"z"}
        if not need <= names or "images" not in {o.name for o in self.session.get_outputs()}:
            raise ValueError(f"{model_path}: graph does not follow the image contract (inputs {sorted(names)})")

    def forward(self, z: np.ndarray, class_label: np.ndarray | None) -> np.ndarray:
        # Plain run() also on CUDA: the images come back to the host for encoding anyway, and z is tiny.
        feeds: dict[str, Any] = {"z": np.ascontiguousarray(z, dtype=np.float32)}
        if self.info.num_classes:
            if class_label is None:
                raise ValueError("conditional model needs class_label")
            feeds["class_label"] = np.ascontiguousarray(class_label, dtype=np.int64)
        return np.asarray(self.session.run(["images"], feeds)[0])  # [B,C,H,W]

    def warmup(self, batch_sizes: Sequence[int]) -> None:
        for b in sorted(set(batch_sizes)):
            z = np.zeros((b, self.info.latent_size), np.float32)
            labels = np.zeros(b, np.int64) if self.info.num_classes else None
            self.forward(z, labels)
