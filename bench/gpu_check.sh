#!/usr/bin/env bash
# CUDA check of the text engine (not run yet: no GPU machine has been available to the project).
#
#   bench/gpu_check.sh                 # on a machine with an NVIDIA GPU, from the repository root
#   WHEELS=shared/wheels bench/gpu_check.sh --batches 1,8,64,256
#
# 1. installs onnxruntime-gpu (1.31 needs the system's CUDA 13 and cuDNN 9) from a folder of carried wheels
#    ($WHEELS, default shared/wheels) when the venv's onnxruntime cannot run CUDA yet (no network);
# 2. exports a GPT-2-small-sized model (12 layers, d768, 12 heads, vocab 50257, ctx 1024, random weights,
#    fp16) through the project's exporter, with its parity check;
# 3. runs the continuous-batching text engine on CUDA at batch 1..256 and prints, per batch size, tokens/s,
#    ms per engine step, and the memory-bandwidth bound (weight bytes + KV bytes read) / HBM bandwidth.
# Results: bench/results/gpu-<timestamp>.json. Extra arguments go to `python -m bench.gpu_engine`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WHEELS=${WHEELS:-shared/wheels}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || {
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi failed)" >&2; exit 2; }

has_cuda() {
  "$PY" - <<'PY'
import sys
import onnxruntime as ort
if hasattr(ort, "preload_dlls"):
    try:
        ort.preload_dlls()
    except Exception:
        pass
sys.exit(0 if "CUDAExecutionProvider" in ort.get_available_providers() else 1)
PY
}

if ! has_cuda; then
  if [ ! -d "$WHEELS" ]; then
    echo "gpu_check: onnxruntime has no CUDA provider and there is no wheel folder $WHEELS" >&2; exit 2
  fi
  # Never install the CPU `onnxruntime` next to onnxruntime-gpu: both write the same files.
  "$PY" -m pip install --no-index --find-links "$WHEELS" --upgrade onnxruntime-gpu
  has_cuda || { echo "gpu_check: onnxruntime-gpu cannot load CUDA 13 / cuDNN 9 from the system" >&2; exit 2; }
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
# The whole check is sized to finish in under 5 minutes of device time.
timeout 280 "$PY" -m bench.gpu_engine --provider cuda --precision fp16 --out "bench/results/gpu-$stamp.json" "$@"
