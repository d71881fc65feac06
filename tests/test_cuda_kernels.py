"""The CUDA kernels against the numpy oracles (tile.py, postprocess.py, render.py), on a GPU.

Skips cleanly without cuda-python, a CUDA device, or the kernel library (built into a temporary
dir when nvcc and cmake are present). One command on a GPU machine:

    python -m pytest tests/test_cuda_kernels.py -q -m gpu

Every output buffer is poisoned (all bytes 0xFF: NaN in float32 and float16) before each launch,
with a poisoned guard band behind it that must survive.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernel_emulation import (
    REL_TOL,
    emulate_overlay,
    emulate_postprocess,
    separable_reference,
    structured_logits,
)

from cxr_edge.errors import CxrEdgeError
from cxr_edge.postprocess import SaliencyAccumulator, sigmoid, smooth_maps
from cxr_edge.tile import shift_offsets, shift_pairs, tile_shifts

pytestmark = pytest.mark.gpu

N, P = 512, 64
G = N // P
GUARD = 4096  # bytes of poison behind every output


class Gpu:
    """Kernels + a stream + small device-buffer helpers (cxr_edge.gpu / cuda-python)."""

    def __init__(self, kernels) -> None:
        from cxr_edge.gpu import DeviceBuffer, Stream, check, cuda_runtime

        self.kernels, self.rt, self.check, self.DeviceBuffer = kernels, cuda_runtime(), check, DeviceBuffer
        self.stream = Stream()
        self.buffers: list = []

    def upload(self, host: np.ndarray):
        host = np.ascontiguousarray(host)
        buf = self.DeviceBuffer(host.nbytes)
        self.buffers.append(buf)
        buf.upload(host, self.stream)
        self.stream.synchronize()
        return buf

    def poisoned(self, nbytes: int):
        buf = self.DeviceBuffer(nbytes + GUARD)
        self.buffers.append(buf)
        self.check(
            self.rt.cudaMemsetAsync(buf.ptr, 0xFF, nbytes + GUARD, self.stream.handle), "cudaMemsetAsync"
        )
        return buf

    def download(self, buf, shape, dtype, guarded: bool = True) -> np.ndarray:
        dtype = np.dtype(dtype)
        size = int(np.prod(shape)) * dtype.itemsize
        raw = np.empty(size + (GUARD if guarded else 0), dtype=np.uint8)
        buf.download(raw, self.stream)
        self.stream.synchronize()
        if guarded:
            assert np.all(raw[size:] == 0xFF), "a kernel wrote past the end of its output"
        return raw[:size].view(dtype).reshape(shape)

    def free(self) -> None:
        for buf in self.buffers:
            buf.free()
        self.buffers.clear()


@pytest.fixture(scope="module")
def gpu(tmp_path_factory: pytest.TempPathFactory):
    try:
        from cxr_edge.gpu import cuda_runtime

        rt = cuda_runtime()
    except CxrEdgeError as exc:
        pytest.skip(str(exc))
    err, count = rt.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        pytest.skip("no CUDA device")
    from cxr_edge.cuda.build import build_library, build_tools_missing
    from cxr_edge.cuda.kernels import find_library, load_kernels

    path = find_library()
    if path is None:
        if build_tools_missing():
            pytest.skip("no libcxr_edge_cuda.so and no nvcc/cmake to build it")
        try:  # the GPU at hand ("native" needs CMake >= 3.24), else the default arch list
            path = build_library(tmp_path_factory.mktemp("cuda_build"), archs="native")
        except CxrEdgeError:
            path = build_library(tmp_path_factory.mktemp("cuda_build_default"))
    g = Gpu(load_kernels(path))
    yield g
    g.free()
    g.stream.close()


def random_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((N, N), dtype=np.float32)


# ---- tile --------------------------------------------------------------------------------------


def run_tile(gpu: Gpu, image: np.ndarray, steps: int, k0: int, k1: int, dtype) -> np.ndarray:
    from cxr_edge.cuda.kernels import tile_params

    shape = ((k1 - k0) * G * G, 1, P, P)
    d_image = gpu.upload(image)
    d_out = gpu.poisoned(int(np.prod(shape)) * np.dtype(dtype).itemsize)
    gpu.kernels.tile(tile_params(N, P, steps, k0, k1, dtype), d_image.ptr, d_out.ptr, gpu.stream.handle)
    return gpu.download(d_out, shape, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize(
    "steps, k0, k1",
    [
        (1, 0, 1),
        (2, 0, 4),
        (4, 0, 16),
        (8, 0, 64),
        (8, 13, 50),
        (64, 0, 40),
        (64, 2011, 2100),
        (64, 4090, 4096),
    ],
)
def test_tile_is_exactly_the_numpy_patch_batch(gpu: Gpu, steps: int, k0: int, k1: int, dtype) -> None:
    image = random_image(steps * 1000 + k0)
    got = run_tile(gpu, image, steps, k0, k1, dtype)
    want = tile_shifts(image, shift_pairs(steps, P)[k0:k1], P).astype(dtype)
    # Bitwise: float16 rounding of the oracle (round-to-nearest-even) must match too.
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


# ---- postprocess -------------------------------------------------------------------------------


def run_postprocess(gpu: Gpu, logits: np.ndarray, steps: int, raw: bool = True, scaled: bool = True):
    from cxr_edge.cuda.kernels import PostprocessBuffers, PostprocessParams, dtype_code

    classes = logits.shape[1]
    params = PostprocessParams(N, P, steps, classes, dtype_code(logits.dtype))
    d_logits = gpu.upload(logits)
    k = steps * steps
    d_shift = gpu.poisoned(k * classes * 4)
    d_image = gpu.poisoned(classes * 4)
    d_prob = gpu.poisoned(classes * 4)
    d_raw = gpu.poisoned(classes * N * N * 4)
    d_scaled = gpu.poisoned(classes * N * N * 4)
    d_work = gpu.poisoned(gpu.kernels.workspace_bytes(params, raw, scaled) or 4)
    buffers = PostprocessBuffers(
        d_logits.ptr,
        d_shift.ptr,
        d_image.ptr,
        d_prob.ptr,
        d_raw.ptr if raw else None,
        d_scaled.ptr if scaled else None,
        d_work.ptr,
    )
    gpu.kernels.postprocess(params, buffers, gpu.stream.handle)
    maps = (classes, N, N)
    return {
        "shift_logits": gpu.download(d_shift, (k, classes), np.float32),
        "image_logits": gpu.download(d_image, (classes,), np.float32),
        "probabilities": gpu.download(d_prob, (classes,), np.float32),
        "raw": gpu.download(d_raw, maps, np.float32),
        "scaled": gpu.download(d_scaled, maps, np.float32),
    }


def random_logits(steps: int, classes: int, dtype, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (2.0 * rng.standard_normal((steps * steps * G * G, classes))).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("classes", [1, 14])
@pytest.mark.parametrize("steps", [1, 2, 4, 8, 64])
def test_postprocess_matches_numpy_oracle(gpu: Gpu, steps: int, classes: int, dtype) -> None:
    logits = random_logits(steps, classes, dtype, seed=steps * 100 + classes)
    got = run_postprocess(gpu, logits, steps)

    exact = logits.astype(np.float64)  # the oracle sees the same (float16-rounded) values
    acc = SaliencyAccumulator(steps, N, P, classes)
    acc.add(shift_pairs(steps, P), exact)
    want = acc.finish(tuple(str(c) for c in range(classes)))

    shift_means = exact.reshape(steps * steps, G * G, classes).mean(axis=1)
    np.testing.assert_allclose(got["shift_logits"], shift_means, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["image_logits"], want.logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["probabilities"], want.probabilities, rtol=0, atol=1e-6)
    assert np.abs(got["raw"] - want.raw).max() <= 1e-5 * np.abs(want.raw).max()
    assert np.abs(got["scaled"] - want.scaled).max() <= 1e-5 * np.abs(want.scaled).max()


@pytest.mark.parametrize("steps", [8, 64])
@pytest.mark.parametrize("offset", [0.0, -12.0, -25.0])
def test_postprocess_is_its_emulation_and_offset_independent(gpu: Gpu, steps: int, offset: float) -> None:
    """Biased logits (absent findings sit far below zero): the kernels compute exactly what
    tests/kernel_emulation.py computes in float32 (raw maps, shift and image logits bit for bit;
    scaled up to the ulps of expf in the weights), and both meet a relative tolerance against
    the float64 definition (tests/test_kernel_numerics.py shows the emulation's error does not
    grow with the offset)."""
    classes = 3
    logits = structured_logits(steps, offset, classes, seed=steps + int(-offset))
    got = run_postprocess(gpu, logits, steps)
    emulated = emulate_postprocess(logits, steps, N, P)
    want = separable_reference(logits, steps, N, P)
    np.testing.assert_array_equal(got["shift_logits"], emulated["shift_logits"])
    np.testing.assert_array_equal(got["image_logits"], emulated["logits"])
    np.testing.assert_array_equal(got["raw"], emulated["raw"])
    scale = float(np.abs(emulated["scaled"]).max())
    assert np.abs(got["scaled"] - emulated["scaled"]).max() <= 1e-6 * scale
    for kind in ("raw", "scaled"):
        assert np.abs(got[kind] - want[kind]).max() <= REL_TOL * np.abs(want[kind]).max(), kind


def test_too_many_classes_for_shared_memory_is_refused_before_launch(gpu: Gpu) -> None:
    """Classes beyond the device's opt-in shared memory: a CxrEdgeError naming the limit, and
    no kernel has run (the shift logits stay poisoned)."""
    from cxr_edge.cuda.kernels import PostprocessBuffers, PostprocessParams, max_classes

    steps = 64
    limit = gpu.kernels.shared_memory_optin()
    classes = max_classes(steps, N, P, limit) + 1
    params = PostprocessParams(N, P, steps, classes, 0)
    d_logits = gpu.poisoned(steps * steps * G * G * classes * 4)
    d_shift = gpu.poisoned(steps * steps * classes * 4)
    d_maps = gpu.poisoned(classes * N * N * 4)
    d_work = gpu.poisoned(gpu.kernels.workspace_bytes(params, True, False))
    buffers = PostprocessBuffers(d_logits.ptr, d_shift.ptr, None, None, d_maps.ptr, None, d_work.ptr)
    with pytest.raises(CxrEdgeError, match=f"allows {limit} \\(cudaDevAttrMaxSharedMemoryPerBlockOptin\\)"):
        gpu.kernels.postprocess(params, buffers, gpu.stream.handle)
    raw = gpu.download(d_shift, (steps * steps * classes,), np.uint32)
    assert np.all(raw == 0xFFFFFFFF)
    from cxr_edge.cuda.postprocess import GpuPostprocess

    with pytest.raises(CxrEdgeError, match="cudaDevAttrMaxSharedMemoryPerBlockOptin"):
        GpuPostprocess(steps, N, P, classes, library=str(gpu.kernels.path))


@pytest.mark.parametrize("raw, scaled", [(True, False), (False, True), (False, False)])
def test_postprocess_writes_only_the_requested_maps(gpu: Gpu, raw: bool, scaled: bool) -> None:
    steps, classes = 4, 3
    logits = random_logits(steps, classes, np.float32, seed=7)
    got = run_postprocess(gpu, logits, steps, raw=raw, scaled=scaled)
    want_raw, want_scaled = smooth_maps(logits, steps, N, P)
    for name, wanted, ref in (("raw", raw, want_raw), ("scaled", scaled, want_scaled)):
        if wanted:
            assert np.abs(got[name] - ref).max() <= 1e-5 * np.abs(ref).max()
        else:
            assert np.isnan(got[name]).all(), f"{name} was written although not requested"
    assert np.isfinite(got["image_logits"]).all()


def test_oracle_agrees_with_the_definition_in_float64(gpu: Gpu) -> None:
    """Independent check of the shared oracle: shift each blocky map back and average."""
    steps, classes = 2, 1
    logits = random_logits(steps, classes, np.float32, seed=3)
    got = run_postprocess(gpu, logits, steps)
    per_shift = logits.astype(np.float64).reshape(steps * steps, G, G, classes)
    weights = sigmoid(per_shift.mean(axis=(1, 2)))  # (K, C)
    raw = np.zeros((classes, N, N))
    scaled = np.zeros((classes, N, N))
    for k, (dr, dc) in enumerate(shift_pairs(steps, P)):
        block = np.kron(per_shift[k, :, :, 0], np.ones((P, P)))  # (N, N) patch map
        back = np.zeros((N, N))
        ys, xs = slice(max(dr, 0), N + min(dr, 0)), slice(max(dc, 0), N + min(dc, 0))
        back[ys, xs] = block[max(-dr, 0) : N - max(dr, 0), max(-dc, 0) : N - max(dc, 0)]
        raw[0] += back
        scaled[0] += back * weights[k, 0]
    assert np.abs(got["raw"] - raw / steps**2).max() <= 1e-5
    assert np.abs(got["scaled"] - scaled / steps**2).max() <= 1e-5


# ---- overlay -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, crop", [((300, 260), (20, 0, 260)), ((256, 256), (0, 0, 256)), ((700, 1100), (0, 200, 700))]
)
def test_overlay_is_its_formula_exactly(gpu: Gpu, shape, crop) -> None:
    """Bit for bit the kernel's formula in numpy (tests/kernel_emulation.py); within one level of
    render.overlay (cv2.resize rounds its weights differently; tests/test_kernel_numerics.py)."""
    from cxr_edge.cuda.kernels import overlay_params
    from cxr_edge.preprocess import CropBox
    from cxr_edge.render import DIVERGING_LUT, overlay

    rng = np.random.default_rng(shape[0])
    gray = rng.integers(0, 256, shape, dtype=np.uint8)
    maps = (rng.standard_normal((3, N, N)) * 1.5).astype(np.float32)
    box = CropBox(*crop)
    vmax = [2.0, 0.7, 0.0]  # the last one: nothing to show -> plain gray
    d_gray, d_maps = gpu.upload(gray), gpu.upload(maps)
    d_out = gpu.poisoned(3 * shape[0] * shape[1] * 3)
    params = overlay_params(N, shape, box, [2, 0, 1], vmax, alpha_max=0.6)
    gpu.kernels.overlay(params, d_gray.ptr, d_maps.ptr, d_out.ptr, None, gpu.stream.handle)
    got = gpu.download(d_out, (3, *shape, 3), np.uint8)
    for o, (m, v) in enumerate(zip([2, 0, 1], vmax)):
        np.testing.assert_array_equal(got[o], emulate_overlay(gray, maps[m], crop, v, DIVERGING_LUT, 0.6))
        cv2_way = overlay(gray, maps[m], box, v, alpha_max=0.6).astype(np.int16)
        assert np.abs(got[o].astype(np.int16) - cv2_way).max() <= 1


def test_overlay_reads_vmax_from_the_device(gpu: Gpu) -> None:
    from cxr_edge.cuda.kernels import overlay_params
    from cxr_edge.preprocess import CropBox
    from cxr_edge.render import DIVERGING_LUT

    rng = np.random.default_rng(11)
    gray = rng.integers(0, 256, (200, 180), dtype=np.uint8)
    maps = rng.standard_normal((2, N, N)).astype(np.float32)
    vmax = np.abs(maps).reshape(2, -1).max(axis=1).astype(np.float32)
    box = CropBox(10, 0, 180)
    d_out = gpu.poisoned(2 * 200 * 180 * 3)
    params = overlay_params(N, gray.shape, box, [1, 0], [-1.0, -1.0])  # host vmax ignored
    gpu.kernels.overlay(
        params, gpu.upload(gray).ptr, gpu.upload(maps).ptr, d_out.ptr, gpu.upload(vmax).ptr, gpu.stream.handle
    )
    got = gpu.download(d_out, (2, 200, 180, 3), np.uint8)
    crop = (box.top, box.left, box.side)
    np.testing.assert_array_equal(got[0], emulate_overlay(gray, maps[1], crop, float(vmax[1]), DIVERGING_LUT))
    np.testing.assert_array_equal(got[1], emulate_overlay(gray, maps[0], crop, float(vmax[0]), DIVERGING_LUT))


# ---- the pipeline-facing accumulator ----------------------------------------------------------


@pytest.mark.parametrize("logits_dtype", [np.float32, np.float16])
def test_gpu_postprocess_accumulator_matches_numpy(gpu: Gpu, logits_dtype) -> None:
    from cxr_edge.cuda.postprocess import GpuPostprocess
    from cxr_edge.preprocess import CropBox
    from cxr_edge.render import DIVERGING_LUT

    steps, classes = 8, 14
    logits = random_logits(steps, classes, logits_dtype, seed=5).astype(np.float32)
    pairs = shift_pairs(steps, P)
    labels = tuple(f"c{c}" for c in range(classes))
    want_acc = SaliencyAccumulator(steps, N, P, classes)
    want_acc.add(pairs, logits)
    want = want_acc.finish(labels)

    with GpuPostprocess(
        steps, N, P, classes, logits_dtype=logits_dtype, library=str(gpu.kernels.path)
    ) as post:
        # Chunks out of order, one of them not contiguous in k.
        rows = logits.reshape(steps * steps, G * G, classes)
        for ks in (
            [40, 41, 42, 43],
            [0, 1, 2],
            [63, 5],
            list(range(3, 5)) + list(range(6, 40)) + list(range(44, 63)),
        ):
            post.add(pairs[ks], rows[ks].reshape(-1, classes))
        with pytest.raises(CxrEdgeError, match="twice"):
            post.add(pairs[[0]], rows[[0]].reshape(-1, classes))
        got = post.finish(labels)
        gray = np.random.default_rng(1).integers(0, 256, (600, 520), dtype=np.uint8)
        box = CropBox(40, 0, 520)
        images = post.overlay(gray, box, [3, 0], [1.0, 0.5], map="scaled")

    assert got.labels == labels and got.steps == steps
    np.testing.assert_allclose(got.logits, want.logits, rtol=0, atol=1e-5)
    assert np.abs(got.raw - want.raw).max() <= 1e-5
    assert np.abs(got.scaled - want.scaled).max() <= 1e-5
    # The unshifted copy's patch logits come back from the logits buffer as they went in.
    np.testing.assert_array_equal(got.patch_logits, want.patch_logits)
    # The overlay draws the GPU's own map: compare with the kernel's formula on that same map.
    np.testing.assert_array_equal(
        images[0], emulate_overlay(gray, got.scaled[3], (40, 0, 520), 1.0, DIVERGING_LUT)
    )
    np.testing.assert_array_equal(
        images[1], emulate_overlay(gray, got.scaled[0], (40, 0, 520), 0.5, DIVERGING_LUT)
    )


def test_engine_written_logits_need_no_host_copy(gpu: Gpu) -> None:
    """The device path the pipeline takes with TensorRT: an "engine" (here a device-to-device
    copy on its own stream) writes each chunk at ``logits_address(first_shift)``, the chunk is
    declared with ``mark_written``, and the maps equal the numpy oracle's."""
    from cxr_edge.cuda.postprocess import GpuPostprocess
    from cxr_edge.gpu import DeviceBuffer, Stream, copy_device

    steps, classes = 4, 14
    logits = random_logits(steps, classes, np.float32, seed=8).astype(np.float32)
    labels = tuple(f"c{c}" for c in range(classes))
    want_acc = SaliencyAccumulator(steps, N, P, classes)
    want_acc.add(shift_pairs(steps, P), logits)
    want = want_acc.finish(labels)
    engine_stream = Stream(None)
    staged = DeviceBuffer(logits.nbytes)
    staged.upload(logits, engine_stream)
    row_bytes = classes * 4
    with GpuPostprocess(steps, N, P, classes, library=str(gpu.kernels.path)) as post:
        for first, count in ((0, 5), (5, 7), (12, 4)):
            src = staged.ptr + first * G * G * row_bytes
            copy_device(src, post.logits_address(first), count * G * G * row_bytes, engine_stream)
            post.mark_written(first, count)
        with pytest.raises(CxrEdgeError, match="outside"):
            post.mark_written(15, 2)
        engine_stream.synchronize()
        got = post.finish(labels)
    staged.free()
    engine_stream.close()
    np.testing.assert_allclose(got.logits, want.logits, rtol=0, atol=1e-5)
    assert np.abs(got.raw - want.raw).max() <= 1e-5
    assert np.abs(got.scaled - want.scaled).max() <= 1e-5
    np.testing.assert_array_equal(got.patch_logits, want.patch_logits)


def test_offsets_used_by_the_library_are_the_oracles(gpu: Gpu) -> None:
    for steps in (1, 2, 4, 8, 16, 32, 64):
        np.testing.assert_array_equal(gpu.kernels.shift_offsets(steps, P), shift_offsets(steps, P))
