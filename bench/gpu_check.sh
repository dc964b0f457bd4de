#!/usr/bin/env bash
# CUDA check of the engines on a machine with an NVIDIA GPU; `python -m bench.gpu_record` records a run in
# bench/RESULTS.md (its GPU section) with the machine and the commit.
#
#   bench/gpu_check.sh                 # on a machine with an NVIDIA GPU, from the repository root
#   bench/gpu_check.sh --batches 1,8,64,256
#
# Works on a bare machine without network (no venv, no project install), given what bench/gpu_wheels.sh
# prepares here: onnxruntime-gpu and the few pure-Python packages the engines import that such an image
# lacks (pydantic, pydantic-settings and their needs). It:
# 1. makes the project importable without installing it (its package folders on PYTHONPATH);
# 2. installs the carried wheels into $SITE, joining onnxruntime-gpu from its parts first where they were
#    carried in several calls ($PARTS, see bench/gpu_wheels.sh), unless onnxruntime can run CUDA already;
#    onnxruntime-gpu 1.31 needs CUDA 13 and cuDNN 9, which it loads from the system or from the nvidia-*
#    Python packages (ort.preload_dlls);
# 3. exports a GPT-2-small-sized model (12 layers, d768, 12 heads, vocab 50257, ctx 1024, random weights, fp16)
#    through the project's exporter, with its parity check, and runs the continuous-batching text engine on
#    CUDA at batch 1..256: tokens/s, ms per engine step, and the memory-bandwidth bound (gpu_engine.py);
# 4. runs the image engine on CUDA with the built-in dcgan-digits (carried in models/, or $MODELS): images/s
#    at batch 1 and 64, the engine's batch gain target (python -m bench.engine_benchmarks), and
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

# 1. The project's packages by their import names, without pip: each lives in its own folder (genqueue_worker
#    in worker/, ...), so those folders go on the path.
if ! "$PY" -c "import genqueue_worker.engine" 2>/dev/null; then
  export PYTHONPATH="$PWD:$PWD/api:$PWD/worker:$PWD/exporter${PYTHONPATH:+:$PYTHONPATH}"
fi

# The CUDA 13 / cuDNN 9 libraries of such an image live in the nvidia-* Python packages of another
# environment (torch's), where onnxruntime-gpu installed under $SITE does not look (ort.preload_dlls searches
# next to its own folder): put every nvidia/*/lib folder the interpreter can import on the loader's path.
nv_libs=$("$PY" - <<'PY' 2>/dev/null || true
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
print(":".join(sorted({os.path.dirname(f) for p in nvidia.__path__ for f in glob.glob(os.path.join(p, "*", "lib", "lib*.so*"))})))
PY
)
if [ -n "$nv_libs" ]; then export LD_LIBRARY_PATH="$nv_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi

# onnxruntime-gpu lists CUDA as available even where its libraries cannot load, and then runs on the CPU;
# cuDNN loads only when a convolution first runs. So only a convolution that runs on CUDA, with the right
# result, counts.
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
import numpy as np
from onnx import TensorProto, helper, numpy_helper
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])
w = numpy_helper.from_array(np.full((1, 1, 1, 1), 2.0, np.float32), "w")
graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
                          "probe", [x], [y], [w])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
so = ort.SessionOptions()
so.log_severity_level = 3
try:
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CUDAExecutionProvider"])
    xs = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) - 8
    out = sess.run(None, {"x": xs})[0]
except Exception as e:
    print(f"gpu_check: a CUDA session failed: {e}", file=sys.stderr)
    sys.exit(1)
ok = sess.get_providers()[0] == "CUDAExecutionProvider" and np.allclose(out, np.maximum(2 * xs, 0))
sys.exit(0 if ok else 1)
PY
}

# A rerun on a warm machine: the wheels are installed already.
if [ -d "$SITE/onnxruntime" ]; then export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"; fi

# 2. Carried wheels, onnxruntime-gpu joined from its parts. --target keeps the image's own packages intact;
#    $SITE comes first on the path, so its onnxruntime (the GPU build) is the one imported.
if ! has_cuda 2>/dev/null || ! "$PY" -c "import pydantic_settings" 2>/dev/null; then
  mkdir -p "$SITE/.wheels"
  if ls "$PARTS"/*.part-* >/dev/null 2>&1; then
    name=$(ls "$PARTS"/*.part-* | head -1 | sed 's/\.part-.*$//')
    joined="$SITE/.wheels/$(basename "$name")"
    cat "$PARTS"/*.part-* > "$joined"
    # A machine recycled between the part calls keeps only the last part: say which are missing.
    if [ -f "$PARTS/SHA256SUMS" ]; then
      want=$(cut -d' ' -f1 "$PARTS/SHA256SUMS")
      if [ "$(sha256sum "$joined" | cut -d' ' -f1)" != "$want" ]; then
        echo "gpu_check: the joined wheel does not match its sha256; parts here: $(ls "$PARTS" | tr '\n' ' ')" \
             "(expected $(cat "$PARTS/PARTS" 2>/dev/null || echo '?') parts: was the machine recycled between calls?)" >&2
        exit 2
      fi
    fi
  fi
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then cp "$WHEELS"/*.whl "$SITE/.wheels/"; fi
  if ! ls "$SITE/.wheels"/*.whl >/dev/null 2>&1; then
    echo "gpu_check: onnxruntime has no CUDA provider and no wheels were carried ($WHEELS, $PARTS): run bench/gpu_wheels.sh" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$SITE/.wheels"/*.whl
  case ":${PYTHONPATH:-}:" in *":$SITE:"*) ;; *) export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" ;; esac
  has_cuda || { echo "gpu_check: onnxruntime-gpu is installed but cannot run a convolution on CUDA (CUDA 13 /" \
                      "cuDNN 9 libraries; LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}):" >&2
                 ldconfig -p 2>/dev/null | grep -E 'libcublas|libcudnn|libcudart' | head -5 >&2 || true; exit 2; }
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench/results
# 3. Text: the engine against the memory-bandwidth bound.
status=0
timeout 200 "$PY" -m bench.gpu_engine --provider cuda --precision fp16 --out "bench/results/gpu-$stamp.json" "$@" || status=$?

# 4. Images: batch 64 vs batch 1 on CUDA, the built-in generator.
if [ -f "$MODELS/dcgan-digits/1/manifest.json" ]; then
  timeout 90 "$PY" -m bench.engine_benchmarks --models-dir "$MODELS" --provider cuda --only images \
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
