"""The device path end to end on a real GPU, without TensorRT: upload -> CUDA tiling into the
engine's input -> a PyTorch model on the GPU (tools/torch_device_backend.py) writing logits into
the GPU postprocess's buffer -> fused postprocess -> overlay kernel, against the CPU pipeline
(ONNX Runtime + numpy postprocess) on the same weights.

Skips cleanly without torch's CUDA, cuda-python, a GPU or the kernel library (built into a
temporary dir when nvcc and cmake are present). tools/gpu_check.sh runs it.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kernel_emulation import emulate_overlay
from tool_modules import load_tool

from cxr_edge.errors import CxrEdgeError

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[1]
#: The CPU pipeline and the device path agree to this fraction of the map's largest magnitude.
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to PyTorch")
    try:
        from cxr_edge.gpu import device_info

        device_info(0)
    except CxrEdgeError as exc:
        pytest.skip(str(exc))
    from cxr_edge.cuda.build import build_library, build_tools_missing
    from cxr_edge.cuda.kernels import find_library

    path = find_library()
    if path is None:
        if build_tools_missing():
            pytest.skip("no libcxr_edge_cuda.so and no nvcc/cmake to build it")
        try:
            path = build_library(tmp_path_factory.mktemp("cuda_build"), archs="native")
        except CxrEdgeError:
            path = build_library(tmp_path_factory.mktemp("cuda_build_default"))
    return str(path)


@pytest.fixture(scope="module")
def weights(library: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A tiny MedicalPatchNet with BatchNorm-calibrated random weights and its ONNX export
    (parity-checked against PyTorch on the CPU), so both pipelines run the same weights."""
    from cxr_edge.export import export_onnx
    from cxr_edge.metadata import ModelMetadata
    from cxr_edge.model.batchnorm import calibrated_random_model
    from cxr_edge.model.patchnet import VARIANTS

    model = calibrated_random_model(VARIANTS["tiny"], num_classes=14, seed=12)
    path = tmp_path_factory.mktemp("gpu_pipeline") / "tiny.onnx"
    simplify = importlib.util.find_spec("onnxsim") is not None  # GPU images may lack onnx-simplifier
    export_onnx(model, path, ModelMetadata(checkpoint_sha256="0" * 64), parity=True, simplify=simplify)
    return model, path


def cpu_edge(onnx_path: Path) -> Any:
    from cxr_edge.backends.onnxruntime import OnnxRuntimeBackend
    from cxr_edge.pipeline import CxrEdge
    from cxr_edge.postprocess import SaliencyAccumulator

    return CxrEdge(OnnxRuntimeBackend(onnx_path), accumulator=SaliencyAccumulator)


def device_edge(model: Any, onnx_path: Path, library: str, chunk_patches: int = 2048) -> Any:
    """The device path: TorchDeviceBackend + GpuPostprocess + CudaDeviceImage; ``run`` (host
    patches) is disabled so a silent fallback to host tiling fails the test."""
    from cxr_edge.backends.onnxruntime import OnnxRuntimeBackend
    from cxr_edge.cuda.postprocess import GpuPostprocess
    from cxr_edge.cuda.tiling import CudaDeviceImage
    from cxr_edge.pipeline import CxrEdge

    metadata = OnnxRuntimeBackend(onnx_path).metadata
    backend = load_tool("torch_device_backend").TorchDeviceBackend(model, metadata, chunk_patches)

    def host_path(*args: object) -> None:
        raise AssertionError("the device path fell back to host patches")

    backend.run = host_path
    backend.run_device = host_path
    return CxrEdge(
        backend,
        accumulator=functools.partial(GpuPostprocess, library=library),
        device_image=functools.partial(CudaDeviceImage, library=library),
    )


def assert_same_maps(got: Any, want: Any) -> None:
    for kind in ("raw", "scaled"):
        g, w = got.maps.map(kind), want.maps.map(kind)
        scale = float(np.abs(w).max())
        assert scale > 0 and np.abs(g - w).max() <= REL_TOL * scale, (kind, float(np.abs(g - w).max()), scale)
    scale = float(np.abs(want.maps.raw).max())
    assert np.abs(got.maps.logits - want.maps.logits).max() <= REL_TOL * scale
    # Patch logits of PyTorch CUDA and ONNX Runtime CPU differ by ~1e-4 (float32, other order):
    # a sigmoid moves a quarter of that at most.
    np.testing.assert_allclose(got.maps.probabilities, want.maps.probabilities, rtol=0, atol=1e-4)


@pytest.mark.parametrize("steps", [8, 64])
def test_device_path_equals_the_cpu_pipeline(library: str, weights: tuple[Any, Path], steps: int) -> None:
    from cxr_edge.assets import sample_image_path

    model, onnx_path = weights
    want = cpu_edge(onnx_path).predict(sample_image_path(), steps=steps)
    with device_edge(model, onnx_path, library) as edge:
        got = edge.predict(sample_image_path(), steps=steps)
        assert edge._device_images is not None and edge._device_images.made == 1
    assert got.backend == "torch-cuda" and got.steps == steps
    assert_same_maps(got, want)


def test_postprocess_is_reused_and_the_overlay_kernel_draws_its_maps(
    library: str, weights: tuple[Any, Path]
) -> None:
    """Three images at S=8 share one GpuPostprocess (made once, reset per image); the overlay
    kernel then draws the last image's device maps exactly as the kernel's formula says."""
    from cxr_edge.phantoms import render_phantom
    from cxr_edge.render import DIVERGING_LUT

    model, onnx_path = weights
    images = [render_phantom(seed, size=600).image for seed in (3, 4, 5)]
    cpu = cpu_edge(onnx_path)
    with device_edge(model, onnx_path, library) as edge:
        for gray in images:
            assert_same_maps(edge.predict(gray, steps=8), cpu.predict(gray, steps=8))
        assert edge._accumulators.made == 1 and edge._accumulators.idle(8) == 1
        last = edge.predict(images[-1], steps=8)
        post = edge._accumulators.take(8)  # the pooled postprocess still holds those maps
        label = max(last.findings, key=lambda f: f.probability).label
        k = last.metadata.label_index(label)
        vmax = float(np.abs(last.maps.scaled[k]).max())
        crop = last.crop
        drawn = post.overlay(last.gray, crop, [k], [vmax], map="scaled")[0]
        edge._accumulators.give(8, post)
    np.testing.assert_array_equal(
        drawn,
        emulate_overlay(
            last.gray, last.maps.scaled[k], (crop.top, crop.left, crop.side), vmax, DIVERGING_LUT
        ),
    )


def test_concurrent_predicts_on_the_gpu_match_sequential_ones(
    library: str, weights: tuple[Any, Path]
) -> None:
    """Two threads share the engine (locked enqueue) but not a postprocess; the event
    ordering keeps every image's maps its own."""
    from cxr_edge.phantoms import render_phantom

    model, onnx_path = weights
    images = [render_phantom(seed, size=520).image for seed in range(4)]
    with device_edge(model, onnx_path, library, chunk_patches=256) as edge:
        sequential = [edge.predict(img, steps=4) for img in images]
        results: dict[int, Any] = {}
        errors: list[BaseException] = []

        def work(indices: list[int]) -> None:
            try:
                for i in indices:
                    results[i] = edge.predict(images[i], steps=4)
            except BaseException as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)

        threads = [
            threading.Thread(target=work, args=([0, 2],)),
            threading.Thread(target=work, args=([1, 3],)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    for i, want in enumerate(sequential):  # a race would mix images: far beyond this tolerance
        for kind in ("raw", "scaled"):
            got, ref = results[i].maps.map(kind), want.maps.map(kind)
            assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max(), (i, kind)
