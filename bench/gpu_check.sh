#!/usr/bin/env bash
# CUDA check of the engines (not run yet: no GPU machine has been available to the project).
#
#   bench/gpu_check.sh                 # on a machine with an NVIDIA GPU, from the repository root
#   bench/gpu_check.sh --batches 1,8,64,256
#
# Works on a bare machine without network (no venv, no project install), given what bench/gpu_wheels.sh
# prepares here: onnxruntime-gpu and the few pure-Python packages the engines import that such an image
# lacks (pydantic and its needs). It:
# 1. makes the project importable without installing it (a tree of links named by the import names);
# 2. installs the carried wheels into $SITE, joining onnxruntime-gpu from its parts first where they were
#    carried in several calls ($PARTS, see bench/gpu_wheels.sh), unless onnxruntime can run CUDA already;
#    onnxruntime-gpu 1.31 needs CUDA 13 and cuDNN 9, which it loads from the system or from the nvidia-*
#    Python packages (ort.preload_dlls);
# 3. exports a GPT-2-small-sized model (12 layers, d768, 12 heads, vocab 50257, ctx 1024, random weights, fp16)
#    through the project's exporter, with its parity check, and runs the continuous-batching text engine on
#    CUDA at batch 1..256: tokens/s, ms per engine step, and the memory-bandwidth bound (gpu_engine.py);
# 4. runs the image engine on CUDA with the built-in dcgan-digits (carried in models/, or $MODELS): images/s
#    at batch 1 and 64, the engine's batch gain target (python -m genqueue_worker.engine.benchmarks), and
#    beside them the same engine around a forward that costs nothing (image_host_ceiling: the host's bound);
# Results: bench/results/gpu-<timestamp>.json and gpu-images-<timestamp>.json (and under $OUT when set).
# Extra arguments go to `python -m bench.gpu_engine`. Sized to finish in under 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
WHEELS=${WHEELS:-.whl}
PARTS=${PARTS:-/tmp/genqueue-wheel-parts}
SITE=${SITE:-/tmp/genqueue-site}
MODELS=${MODELS:-models}
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || {
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi failed)" >&2; exit 2; }

# 1. The project's packages by their import names, without pip (genqueue_worker lives in worker/, ...).
if ! "$PY" -c "import genqueue_worker" 2>/dev/null; then
  mkdir -p build/gpu-src
  for p in genqueue:genqueue api:genqueue_api worker:genqueue_worker exporter:genqueue_exporter; do
    ln -sfn "$PWD/${p%%:*}" "build/gpu-src/${p##*:}"
  done
  export PYTHONPATH="$PWD/build/gpu-src${PYTHONPATH:+:$PYTHONPATH}"
fi

# onnxruntime-gpu lists CUDA as available even where its libraries cannot load, and then runs on the CPU:
# only a session that actually runs on CUDA counts.
has_cuda() {
  "$PY" - <<'PY'
import sys
import onnxruntime as ort
if hasattr(ort, "preload_dlls"):
    try:
        ort.preload_dlls()
    except Exception:
        pass
if "CUDAExecutionProvider" not in ort.get_available_providers():
    sys.exit(1)
from onnx import TensorProto, helper
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
so = ort.SessionOptions()
so.log_severity_level = 4
sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CUDAExecutionProvider"])
sys.exit(0 if sess.get_providers()[0] == "CUDAExecutionProvider" else 1)
PY
}

# 2. Carried wheels, onnxruntime-gpu joined from its parts. --target keeps the image's own packages intact;
#    $SITE comes first on the path, so its onnxruntime (the GPU build) is the one imported.
if ! has_cuda 2>/dev/null || ! "$PY" -c "import pydantic" 2>/dev/null; then
  mkdir -p "$SITE/.wheels"
  if ls "$PARTS"/*.part-* >/dev/null 2>&1; then
    name=$(ls "$PARTS"/*.part-* | head -1 | sed 's/\.part-.*$//')
    cat "$PARTS"/*.part-* > "$SITE/.wheels/$(basename "$name")"
  fi
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then cp "$WHEELS"/*.whl "$SITE/.wheels/"; fi
  if ! ls "$SITE/.wheels"/*.whl >/dev/null 2>&1; then
    echo "gpu_check: onnxruntime has no CUDA provider and no wheels were carried ($WHEELS, $PARTS): run bench/gpu_wheels.sh" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$SITE/.wheels"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  has_cuda || { echo "gpu_check: onnxruntime-gpu cannot load CUDA 13 / cuDNN 9 here" >&2; exit 2; }
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench/results
# 3. Text: the engine against the memory-bandwidth bound.
status=0
timeout 200 "$PY" -m bench.gpu_engine --provider cuda --precision fp16 --out "bench/results/gpu-$stamp.json" "$@" || status=$?

# 4. Images: batch 64 vs batch 1 on CUDA, the built-in generator.
if [ -f "$MODELS/dcgan-digits/1/manifest.json" ]; then
  timeout 90 "$PY" -m genqueue_worker.engine.benchmarks --models-dir "$MODELS" --provider cuda --only images \
    --repeats 3 > "bench/results/gpu-images-$stamp.json" || status=$?
  cat "bench/results/gpu-images-$stamp.json"
  if grep -q CPUExecutionProvider "bench/results/gpu-images-$stamp.json"; then
    echo "gpu_check: the image engine fell back to the CPU; these are not CUDA figures" >&2
    status=2
  fi
else
  echo "gpu_check: $MODELS/dcgan-digits/1 is missing (carry models/ from a machine that ran make models)" >&2
  status=2
fi
if [ -n "${OUT:-}" ]; then cp bench/results/gpu-*"$stamp"*.json "$OUT"/ 2>/dev/null || true; fi
exit "$status"
