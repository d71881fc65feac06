"""Build ``libcxr_edge_cuda.so`` with CMake from a source checkout (needs nvcc and cmake).

``python -m cxr_edge.cuda.build [ARCHS]`` is the same as ``tools/build_cuda.sh``: it builds into
``<repo>/build/``, where the binding looks. Tests call ``build_library`` with a temporary dir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from cxr_edge.cuda.kernels import LIBRARY_NAME
from cxr_edge.errors import CxrEdgeError

REPO_ROOT = Path(__file__).resolve().parents[2]


def build_tools_missing() -> list[str]:
    """Names of the missing build tools (nvcc, cmake); empty when a build can run."""
    return [tool for tool in ("nvcc", "cmake") if shutil.which(tool) is None]


def build_library(
    build_dir: str | Path | None = None, archs: str | None = None, jobs: int | None = None
) -> Path:
    """Configure and build; returns the path of the built library.

    archs: ``CMAKE_CUDA_ARCHITECTURES`` (e.g. ``"90"``), None for the CMakeLists default
    (sm_87, sm_89, sm_90 + PTX). Raises CxrEdgeError with the tail of the log on failure.
    """
    if not (REPO_ROOT / "CMakeLists.txt").is_file():
        raise CxrEdgeError(
            REPO_ROOT, "no CMakeLists.txt: the CUDA library builds from a source checkout only"
        )
    missing = build_tools_missing()
    if missing:
        raise CxrEdgeError(None, f"cannot build the CUDA kernels: {', '.join(missing)} not found on PATH")
    build_dir = Path(build_dir) if build_dir is not None else REPO_ROOT / "build"
    configure = ["cmake", "-S", str(REPO_ROOT), "-B", str(build_dir)]
    if archs:
        configure.append(f"-DCMAKE_CUDA_ARCHITECTURES={archs}")
    # nvcc may live outside CMake's search path (e.g. /usr/local/bin/nvcc).
    env = dict(os.environ)
    env.setdefault("CUDACXX", shutil.which("nvcc") or "nvcc")
    for cmd in (configure, ["cmake", "--build", str(build_dir), "-j", str(jobs or os.cpu_count() or 1)]):
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
            raise CxrEdgeError(build_dir, f"'{' '.join(cmd)}' failed:\n" + "\n".join(tail))
    library = build_dir / LIBRARY_NAME
    if not library.is_file():
        raise CxrEdgeError(library, "the build finished but produced no library")
    return library


if __name__ == "__main__":
    print(build_library(archs=sys.argv[1] if len(sys.argv) > 1 else None))
