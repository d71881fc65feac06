#!/usr/bin/env bash
# The GPU path's proof in one command, on any CUDA GPU machine with PyTorch (a CUDA build),
# cuda-python, nvcc, cmake and compute-sanitizer; no TensorRT and no network needed.
#
#   tools/gpu_check.sh          # from anywhere; PYTHON=python3.12 picks the interpreter
#
#   1  GPU, driver, compute capability
#   2  build libcxr_edge_cuda.so for this GPU only
#   3  every gpu-marked test: kernels against their numpy oracles and float32 emulation, the
#      device path end to end (upload, GPU tiling, PyTorch model writing into the postprocess
#      buffer, fused postprocess, overlay) at S=8 and S=64 against the CPU pipeline, reuse and
#      threads; a skipped GPU test fails the check unless its reason matches
#      $GPU_CHECK_ALLOW_SKIP (default: TensorRT, which such a machine lacks)
#   4  compute-sanitizer memcheck, racecheck and synccheck on small shapes
#      (GPU_CHECK_SKIP_SANITIZER=1 skips them where the runtime refuses the sanitizer, e.g. gVisor;
#      the last line then says so)
#   5  a timing table per stage at S=8 and S=64, and host tiling + copy against GPU tiling
#
# Exits non-zero at the first failure, naming it. The whole run stops after
# $GPU_CHECK_LIMIT seconds (default 600). Logs, JUnit XML and timings JSON: $GPU_CHECK_OUT
# (default build/gpu_check).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT="${GPU_CHECK_OUT:-$ROOT/build/gpu_check}"
BUILD="$OUT/cuda-build"
ALLOW_SKIP="${GPU_CHECK_ALLOW_SKIP:-tensorrt}"
LIMIT="${GPU_CHECK_LIMIT:-600}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
START=$SECONDS

section() { printf '\n==== %s  [%ds]\n' "$*" "$((SECONDS - START))"; }
fail() {
  printf '\ngpu_check: FAILED: %s  [%ds]\n' "$*" "$((SECONDS - START))" >&2
  exit 1
}
# run WHAT COMMAND...: COMMAND within the time left of $LIMIT; a failure names WHAT.
run() {
  local what="$1" left=$((LIMIT - (SECONDS - START))) status=0
  shift
  ((left > 0)) || fail "out of time before: $what"
  timeout --kill-after=10 "$left" "$@" || status=$?
  ((status == 124 || status == 137)) && fail "$what ran past the ${LIMIT}s limit"
  ((status == 0)) || fail "$what (exit $status)"
}

section "0. tools"
for tool in nvidia-smi nvcc cmake timeout "$PY"; do
  command -v "$tool" >/dev/null 2>&1 || fail "'$tool' is not on PATH"
done
SANITIZER="$(command -v compute-sanitizer || true)"
if [[ -z "$SANITIZER" ]]; then
  NVCC_HOME="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
  for dir in "${CUDA_HOME:-}" "$NVCC_HOME" /usr/local/cuda; do
    if [[ -n "$dir" && -x "$dir/bin/compute-sanitizer" ]]; then
      SANITIZER="$dir/bin/compute-sanitizer"
      break
    fi
  done
fi
if [[ -z "$SANITIZER" && "${GPU_CHECK_SKIP_SANITIZER:-0}" != 1 ]]; then
  fail "compute-sanitizer not found (PATH, \$CUDA_HOME/bin, beside nvcc, /usr/local/cuda/bin)"
fi
echo "python: $(command -v "$PY"); nvcc: $(command -v nvcc); compute-sanitizer: ${SANITIZER:-none}"
run "python modules" "$PY" - <<'EOF'
import importlib

missing = []
for name in ("numpy", "cv2", "onnx", "onnxruntime", "pytest", "torch"):
    try:
        importlib.import_module(name)
    except ImportError:
        missing.append(name)
if missing:
    raise SystemExit(f"missing Python modules: {', '.join(missing)}")
import torch

if not torch.cuda.is_available():
    raise SystemExit(f"torch {torch.__version__} sees no CUDA device")
from cxr_edge.gpu import cuda_runtime  # cuda-python: cuda.bindings.runtime or cuda.cudart

cuda_runtime()
print("python modules: ok; torch", torch.__version__, "built for CUDA", torch.version.cuda)
EOF

section "1. GPU"
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
nvcc --version | tail -n 2
CC="$("$PY" -c 'import torch; m, n = torch.cuda.get_device_capability(0); print(f"{m}{n}")')"
[[ "$CC" =~ ^[0-9]+$ ]] || fail "could not read the compute capability (got '$CC')"
echo "GPU 0: $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))'), compute capability ${CC:0:${#CC}-1}.${CC: -1}"

section "2. build libcxr_edge_cuda.so for sm_${CC}"
mkdir -p "$OUT"
# The library's own build (cmake configure + build, Release); a failure prints the log's tail.
run "building the CUDA library" "$PY" - "$BUILD" "${CC}-real" <<'EOF'
import sys

from cxr_edge.cuda.build import build_library
from cxr_edge.errors import CxrEdgeError

try:
    build_library(sys.argv[1], sys.argv[2])
except CxrEdgeError as exc:
    raise SystemExit(str(exc)) from None
EOF
export CXR_EDGE_CUDA_LIB="$BUILD/libcxr_edge_cuda.so"
[[ -f "$CXR_EDGE_CUDA_LIB" ]] || fail "the build produced no $CXR_EDGE_CUDA_LIB"
echo "built $CXR_EDGE_CUDA_LIB"

section "3. gpu-marked tests (kernels; device path at S=8 and S=64 against the CPU pipeline)"
JUNIT="$OUT/gpu-tests.xml"
run "gpu tests" "$PY" -m pytest -q -m gpu -p no:cacheprovider -rs --junitxml="$JUNIT" tests
run "gpu test skips" "$PY" - "$JUNIT" "$ALLOW_SKIP" <<'EOF'
import re
import sys
import xml.etree.ElementTree as ET

ran, bad = 0, []
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    ran += 1
    skip = case.find("skipped")
    reason = "" if skip is None else f"{case.get('name', '')} {skip.get('message', '')}"
    if skip is not None and not re.search(sys.argv[2], reason, re.IGNORECASE):
        bad.append(f"{case.get('classname')}::{case.get('name')}: {skip.get('message')}")
if ran == 0:
    raise SystemExit("no GPU tests ran")
if bad:  # a skipped GPU test proves nothing on a GPU machine
    raise SystemExit("GPU tests skipped on a GPU machine:\n  " + "\n  ".join(bad))
print(f"{ran} gpu tests collected; skips only where allowed ({sys.argv[2]})")
EOF

section "4. compute-sanitizer on small shapes"
if [[ "${GPU_CHECK_SKIP_SANITIZER:-0}" == 1 ]]; then
  echo "SKIPPED (GPU_CHECK_SKIP_SANITIZER=1)"
else
  for tool in memcheck racecheck synccheck; do
    echo "-- $tool"
    run "compute-sanitizer --tool $tool" \
      "$SANITIZER" --tool "$tool" --error-exitcode 1 --print-limit 20 "$PY" tools/sanitize_kernels.py
  done
fi

section "5. timings"
run "timings" "$PY" tools/bench_device_path.py --steps 8 64 --repeats 3 --json "$OUT/timings.json"

if [[ "${GPU_CHECK_SKIP_SANITIZER:-0}" == 1 ]]; then
  section "GPU checks passed, compute-sanitizer SKIPPED, in $((SECONDS - START)) s"
else
  section "all GPU checks passed in $((SECONDS - START)) s"
fi
