#!/usr/bin/env bash
# Prepares here (a machine with network) what bench/gpu_check.sh needs on a GPU machine without network,
# where Python 3.12, torch, numpy, tokenizers, Pillow and the CUDA 13 / cuDNN 9 libraries are installed
# but onnxruntime is the CPU build and pydantic and pydantic-settings are missing:
#
#   bench/gpu_wheels.sh                # then make the calls it prints, one right after the other
#
# It downloads the wheels (CPython $PYVER, manylinux x86_64) into .whl/ (ignored by git), and cuts
# onnxruntime-gpu (~255 MB) into parts of $PART_MB MiB, because one call to the GPU machine carries at most
# 64 MiB: .whl/p0 ... .whl/pN hold one part each, .whl/small the other wheels. The parts travel in
# successive calls and wait in /tmp on the machine, which keeps its files while it stays warm (about 30 s
# between calls); the last call joins them and runs the check.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
ORT=${ORT:-onnxruntime-gpu==1.31.*}
PART_MB=${PART_MB:-50}
PARTS=/tmp/genqueue-wheel-parts

exclude=$(git rev-parse --git-path info/exclude)  # a worktree's .git is a file
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
rm -rf .whl
mkdir -p .whl/small
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl/small \
  "$ORT"
# pydantic with the exact pydantic-core it requires (it refuses any other at import), resolved by pip for
# the device's Python rather than taken as the latest of each.
python3 -m pip download -q --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl/small pydantic pydantic-settings
ort=$(ls .whl/small/onnxruntime_gpu-*.whl)
sha256sum "$ort" | sed "s|  .*|  $(basename "$ort")|" > .whl/SHA256SUMS
split -b "${PART_MB}m" -d -a 2 "$ort" ".whl/$(basename "$ort").part-"
rm "$ort"
ls .whl/*.part-* | wc -l | tr -d ' ' > .whl/PARTS
for p in .whl/*.part-*; do
  d=".whl/p${p##*.part-}"
  mkdir -p "$d" && mv "$p" "$d/"
done
last=$(ls -d .whl/p* | sort | tail -1)
mv .whl/SHA256SUMS .whl/PARTS "$last/"  # the final call checks the joined wheel against them
echo "gpu_wheels: .whl is ready ($(du -sh .whl | cut -f1)). Calls to the GPU machine, back to back:"
for d in $(ls -d .whl/p* | sort); do
  [ "$d" = "$last" ] && continue
  # Listing the parts shows at once whether the machine stayed warm (it keeps files ~30 s between calls).
  echo "  run carry=[\"$d\"]  command: mkdir -p $PARTS && cp $d/* $PARTS/ && ls -l $PARTS"
done
echo "  run carry=[\"$last\", \".whl/small\", \"models/dcgan-digits\"]  timeout_s=420" \
     "command: mkdir -p $PARTS && cp $last/* $PARTS/ && WHEELS=.whl/small bash bench/gpu_check.sh --batches 1,8,64,256"
