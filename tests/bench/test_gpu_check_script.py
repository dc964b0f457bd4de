"""bench/gpu_check.sh stops early with a clear line where it cannot produce CUDA figures (no GPU, no
wheels to install), instead of measuring the CPU fallback and calling it a GPU run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_check(tmp_path: Path, smi_exit: int) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    smi = fake / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho 'Test GPU, 1 MiB, 0.0'\nexit {smi_exit}\n")
    smi.chmod(0o755)
    (tmp_path / "empty").mkdir(exist_ok=True)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PY": sys.executable,
           "WHEELS": str(tmp_path / "empty"), "PARTS": str(tmp_path / "empty"), "SITE": str(tmp_path / "site")}
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_without_a_gpu_it_stops_before_measuring(tmp_path: Path) -> None:
    r = run_check(tmp_path, smi_exit=1)
    assert r.returncode == 2
    assert "no NVIDIA GPU here" in r.stderr


def test_without_cuda_or_wheels_it_says_what_to_carry(tmp_path: Path) -> None:
    # nvidia-smi answers, but this machine's onnxruntime cannot run a session on CUDA.
    r = run_check(tmp_path, smi_exit=0)
    assert r.returncode == 2
    assert "no wheels were carried" in r.stderr and "bench/gpu_wheels.sh" in r.stderr
    assert not (tmp_path / "site" / "onnxruntime").exists()
