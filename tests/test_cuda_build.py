"""CI compile-and-link of the CUDA kernels (no GPU needed); skips only without nvcc/cmake.

Also exercises the host-side half of the library through the ctypes binding: the shift
offsets against the numpy oracle, struct layouts, and argument checks that must fail before
anything touches a GPU.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess

import numpy as np
import pytest

from cxr_edge.cuda.build import build_library, build_tools_missing
from cxr_edge.cuda.kernels import (
    OverlayParams,
    PostprocessBuffers,
    PostprocessParams,
    TileParams,
    load_kernels,
    tile_params,
)
from cxr_edge.errors import CxrEdgeError
from cxr_edge.tile import shift_offsets

EXPORTED = {
    "cxr_tile_launch",
    "cxr_postprocess_launch",
    "cxr_overlay_launch",
    "cxr_postprocess_workspace_bytes",
    "cxr_postprocess_shared_bytes",
    "cxr_device_shared_memory_optin",
    "cxr_shift_offsets",
    "cxr_device_count",
    "cxr_status_string",
    "cxr_last_cuda_error",
    "cxr_last_cuda_error_string",
    "cxr_struct_size",
    "cxr_abi_version",
}


@pytest.fixture(scope="module")
def built_library(tmp_path_factory: pytest.TempPathFactory):
    missing = build_tools_missing()
    if missing and os.environ.get("CI"):  # CI must compile the kernels on every run
        pytest.fail(f"CI cannot compile the CUDA kernels: {', '.join(missing)} not installed")
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    # One real arch (+ its PTX) keeps CI under a minute; the default list is for releases.
    return build_library(tmp_path_factory.mktemp("cuda_build"), archs="90", jobs=2)


@pytest.fixture(scope="module")
def kernels(built_library):
    return load_kernels(built_library)


def test_library_exports_exactly_the_c_api(built_library) -> None:
    if shutil.which("nm") is None:
        pytest.skip("nm not installed")
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(built_library)], capture_output=True, text=True, check=True
    )
    functions = {line.split()[-1] for line in out.stdout.splitlines() if line.split()[1:2] == ["T"]}
    assert EXPORTED <= functions
    # Hidden visibility: no C++ or CUDA runtime symbols leak out of the library.
    assert {f for f in functions if f.startswith("cxr_")} == EXPORTED
    assert not any(f.startswith(("_Z", "cuda")) for f in functions)


def test_library_has_no_dynamic_cudart_dependency(built_library) -> None:
    if shutil.which("ldd") is None:
        pytest.skip("ldd not installed")
    out = subprocess.run(["ldd", str(built_library)], capture_output=True, text=True, check=True).stdout
    assert "libcudart" not in out  # static runtime: the .so loads on a machine without the toolkit


@pytest.mark.parametrize("patch_size", [4, 16, 64, 128])
def test_shift_offsets_match_numpy_oracle(kernels, patch_size: int) -> None:
    for steps in range(1, patch_size + 1):
        np.testing.assert_array_equal(
            kernels.shift_offsets(steps, patch_size), shift_offsets(steps, patch_size)
        )


def test_struct_mirrors_have_the_library_sizes(kernels) -> None:
    lib = kernels._lib
    for which, struct in enumerate((TileParams, PostprocessParams, PostprocessBuffers, OverlayParams)):
        assert lib.cxr_struct_size(which) == ctypes.sizeof(struct)


def test_workspace_size_is_the_column_pass_buffers(kernels) -> None:
    params = PostprocessParams(512, 64, 8, 14, 0)
    baseline = 64 * 4  # (C,) padded to 64 floats
    one = 14 * 8 * 8 * 512 * 4  # C*S*G*N float32
    cover = 14 * 8 * 512 * 4  # w_cover (C, S, N)
    assert kernels.workspace_bytes(params, True, True) == baseline + 2 * one + cover
    assert kernels.workspace_bytes(params, True, False) == baseline + one
    assert kernels.workspace_bytes(params, False, True) == baseline + one + cover
    assert kernels.workspace_bytes(params, False, False) == 0


@pytest.mark.parametrize(
    "steps, size, patch, classes",
    [
        (1, 512, 64, 1),
        (8, 512, 64, 14),
        (64, 512, 64, 14),
        (64, 512, 64, 100),
        (4, 128, 16, 3),
        (128, 8192, 128, 7),
    ],
)
def test_shared_memory_formula_is_the_librarys(
    kernels, steps: int, size: int, patch: int, classes: int
) -> None:
    from cxr_edge.cuda.kernels import column_pass_shared_bytes

    expected = steps * classes * (size // patch + 1) * 4
    assert column_pass_shared_bytes(steps, size, patch, classes) == expected
    assert kernels.shared_bytes(PostprocessParams(size, patch, steps, classes, 0)) == expected


def test_too_many_classes_for_shared_memory_is_a_clear_error() -> None:
    """Host-side: the message names the limit and how many classes fit. 227 KiB is an H100's
    opt-in limit, 163 KiB Jetson Orin's; at S=64 each class needs 2304 bytes."""
    from cxr_edge.cuda.kernels import max_classes, shared_memory_problem

    h100, orin = 232448, 166912
    assert max_classes(64, 512, 64, h100) == 100 and max_classes(64, 512, 64, orin) == 72
    assert max_classes(8, 512, 64, orin) == 579
    assert shared_memory_problem(PostprocessParams(512, 64, 64, 14, 0), orin) is None
    assert shared_memory_problem(PostprocessParams(512, 64, 64, 72, 0), orin) is None
    problem = shared_memory_problem(PostprocessParams(512, 64, 64, 73, 0), orin)
    assert problem is not None and "\n" not in problem
    assert "73 classes at S=64 need 168192 bytes" in problem
    assert (
        "allows 166912 (cudaDevAttrMaxSharedMemoryPerBlockOptin)" in problem
        and "at most 72 classes" in problem
    )


def test_shared_memory_limit_without_a_device_is_an_error_not_zero(kernels) -> None:
    if kernels.device_count() > 0:
        pytest.skip("a CUDA device is visible")
    with pytest.raises(CxrEdgeError, match="cudaDevAttrMaxSharedMemoryPerBlockOptin"):
        kernels.shared_memory_optin()


def test_no_device_is_reported_as_zero_not_an_error(kernels) -> None:
    assert kernels.device_count() >= 0


# Fake, never dereferenced addresses: each case must be refused by the argument checks.
FAKE = 0x10000


@pytest.mark.parametrize(
    "params, image, out, message",
    [
        (tile_params(512, 64, 8, 0, 64, np.float32), 0, FAKE, "NULL"),
        (tile_params(500, 64, 8, 0, 64, np.float32), FAKE, FAKE, "multiple of patch_size"),
        (tile_params(512, 64, 65, 0, 64, np.float32), FAKE, FAKE, "steps"),
        (tile_params(512, 64, 8, 0, 65, np.float32), FAKE, FAKE, "shift range"),
        (tile_params(512, 64, 8, 5, 5, np.float32), FAKE, FAKE, "shift range"),
        (tile_params(512, 64, 8, -1, 4, np.float32), FAKE, FAKE, "shift range"),
        (tile_params(512, 64, 8, 0, 64, np.float32), FAKE, FAKE + 8, "aligned"),
        (tile_params(512, 64, 8, 0, 64, np.float16), FAKE, FAKE + 4, "aligned"),
    ],
)
def test_tile_rejects_bad_arguments(kernels, params, image, out, message) -> None:
    with pytest.raises(CxrEdgeError, match=message):
        kernels.tile(params, image, out)


def test_bad_dtype_is_a_clear_error() -> None:
    with pytest.raises(CxrEdgeError, match="float32 or float16"):
        tile_params(512, 64, 8, 0, 64, np.float64)


def test_postprocess_rejects_bad_arguments(kernels) -> None:
    good = PostprocessParams(512, 64, 8, 14, 0)
    with pytest.raises(CxrEdgeError, match="NULL"):
        kernels.postprocess(good, PostprocessBuffers(None, FAKE))
    with pytest.raises(CxrEdgeError, match="NULL"):  # maps need the workspace
        kernels.postprocess(good, PostprocessBuffers(FAKE, FAKE, None, None, FAKE, None, None))
    with pytest.raises(CxrEdgeError, match="num_classes"):
        kernels.postprocess(PostprocessParams(512, 64, 8, 0, 0), PostprocessBuffers(FAKE, FAKE))
    with pytest.raises(CxrEdgeError, match="dtype"):
        kernels.postprocess(PostprocessParams(512, 64, 8, 14, 2), PostprocessBuffers(FAKE, FAKE))


def test_overlay_rejects_a_crop_outside_the_image(kernels) -> None:
    from cxr_edge.cuda.kernels import overlay_params
    from cxr_edge.preprocess import CropBox

    params = overlay_params(512, (100, 80), CropBox(top=10, left=0, side=95), [0], [1.0])
    with pytest.raises(CxrEdgeError, match="overlay"):
        kernels.overlay(params, FAKE, FAKE, FAKE)


def test_missing_library_is_a_one_line_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CXR_EDGE_CUDA_LIB", str(tmp_path / "nope.so"))
    with pytest.raises(CxrEdgeError, match="build_cuda.sh") as info:
        load_kernels()
    assert "\n" not in str(info.value)


def test_gpu_postprocess_is_offered_only_with_a_device(built_library, monkeypatch) -> None:
    from cxr_edge.cuda import gpu_accumulator_factory, gpu_postprocess_available

    monkeypatch.setenv("CXR_EDGE_CUDA_LIB", str(built_library))
    try:
        import cuda.bindings.runtime  # noqa: F401

        has_cuda_python = True
    except ImportError:
        has_cuda_python = False
    expected = has_cuda_python and load_kernels(built_library).device_count() > 0
    assert gpu_postprocess_available() is expected
    assert (gpu_accumulator_factory() is not None) is expected
