"""What the figures were measured on."""

from __future__ import annotations

import os
import platform
from typing import Any


def describe() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        ort_version = ort.__version__
    except ImportError:
        providers, ort_version = [], None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "onnxruntime": ort_version,
        "available_providers": providers,
        "load_avg": load_avg(),
    }


def load_avg() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages: how much else wanted these cores around a run."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
