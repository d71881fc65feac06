#!/usr/bin/env bash
# Make the Python environment the local Triton server runs from (tests, tools/bench_triton.py):
# a venv with the tritonserver of the nvidia-pytriton wheel, numpy < 2 and the project's ONNX
# Runtime version. The project's own environment is not touched (it keeps numpy 2).
#   tools/make_triton_env.sh              # -> .venv-triton (where the tests look)
#   tools/make_triton_env.sh DIR          # elsewhere; point CXR_EDGE_TRITON_ENV at it
# Why a separate venv: with numpy 2 the wheel's Python backend stub (it predates numpy 2) sends
# every output tensor empty; numpy 1.26 works. Its Python package pins numpy < 2 too.
# pip then reports the wheel's unmet requirements (pyzmq, tritonclient, ...): expected, they are
# for its own Python package, which the server does not use.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
env_dir="${1:-$root/.venv-triton}"
python="${PYTHON:-python3}"
ort="$("$python" -c 'import onnxruntime; print(onnxruntime.__version__)')"
"$python" -m venv "$env_dir"
"$env_dir/bin/python" -m pip install -q --disable-pip-version-check --no-deps "nvidia-pytriton==0.7.0"
"$env_dir/bin/python" -m pip install -q --disable-pip-version-check "numpy>=1.24,<2" "onnxruntime==$ort"
echo "triton server environment: $env_dir (onnxruntime $ort)"
