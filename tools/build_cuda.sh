#!/usr/bin/env bash
# Build libcxr_edge_cuda.so into build/ (where cxr_edge.cuda finds it).
#   tools/build_cuda.sh                 # default archs: sm_87, sm_89, sm_90 + PTX
#   tools/build_cuda.sh "90-real"       # one arch, quicker
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
args=(-S "$root" -B "$root/build")
if [[ $# -ge 1 ]]; then args+=("-DCMAKE_CUDA_ARCHITECTURES=$1"); fi
cmake "${args[@]}"
cmake --build "$root/build" -j "$(nproc)"
echo "built $root/build/libcxr_edge_cuda.so"
