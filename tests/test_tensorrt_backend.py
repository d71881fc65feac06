"""TensorRT backend: type-check against tensorrt-stubs, stream handles, the run path over a fake
TensorRT/CUDA (chunking, DLA padding, device-resident logits), and real-GPU parity (skips cleanly)."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import fake_cuda
import numpy as np
import pytest

import cxr_edge.backends.tensorrt as trt_backend
from cxr_edge.digest import sha256_file
from cxr_edge.engine.manifest import EngineManifest, write_manifest
from cxr_edge.engine.profile import BatchProfile
from cxr_edge.errors import CxrEdgeError
from cxr_edge.gpu import GpuInfo, stream_handle
from cxr_edge.metadata import ModelMetadata

REPO = Path(__file__).resolve().parents[1]
TYPED_MODULES = ["cxr_edge/engine", "cxr_edge/backends/tensorrt.py", "cxr_edge/gpu.py"]


# --- mypy against tensorrt-stubs ---------------------------------------------------------------


def _repair_stub(text: str) -> str:
    """tensorrt-stubs 10.x has parameters named ``in`` and a default-before-required parameter."""
    text = re.sub(r"([(,]\s*)(in|out):", r"\1\2_:", text)
    lines = text.split("\n")
    for _ in range(50):
        try:
            ast.parse("\n".join(lines))
            return "\n".join(lines)
        except SyntaxError as exc:
            if exc.lineno is None or "default" not in (exc.msg or ""):
                raise
            index = exc.lineno - 1
            lines[index] = re.sub(
                r"(\b\w+: [\w\[\]., ]+?)(?=[,)])",
                lambda m: m.group(1) if "=" in m.group(1) else m.group(1) + " = ...",
                lines[index],
            )
    raise AssertionError("could not repair tensorrt stubs")


def test_gpu_modules_typecheck_against_tensorrt_stubs(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("tensorrt_stubs")
    if os.environ.get("CI"):  # CI installs both: a skip there would hide a type regression
        assert spec is not None and importlib.util.find_spec("mypy") is not None, (
            "CI needs mypy + tensorrt-stubs"
        )
    pytest.importorskip("mypy")
    if spec is None or spec.origin is None:
        pytest.skip("tensorrt-stubs is not installed")
    site = Path(spec.origin).parents[1]
    for package in ("tensorrt", "tensorrt_bindings"):
        stubs = sorted((site / package).glob("*.pyi"))
        assert stubs, f"tensorrt-stubs has no {package}/*.pyi"
        (tmp_path / package).mkdir()
        for stub in stubs:
            (tmp_path / package / stub.name).write_text(_repair_stub(stub.read_text()))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(REPO / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / "cache"),
            *TYPED_MODULES,
        ],
        check=False,
        cwd=REPO,
        env={"MYPYPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- stream handles ----------------------------------------------------------------------------


def test_stream_handle_accepts_the_usual_stream_objects() -> None:
    class CudaPythonStream:  # cuda-python cudaStream_t / CUstream: int() gives the address
        def __int__(self) -> int:
            return 0x1234

    assert stream_handle(0x10) == 0x10
    assert stream_handle(SimpleNamespace(handle=0x20)) == 0x20  # pycuda.driver.Stream
    assert stream_handle(SimpleNamespace(ptr=0x30)) == 0x30  # CuPy stream
    assert stream_handle(CudaPythonStream()) == 0x1234
    with pytest.raises(CxrEdgeError, match="stream handle"):
        stream_handle(object())
    with pytest.raises(CxrEdgeError):
        stream_handle(True)


def test_backend_without_tensorrt_is_a_one_line_error(tmp_path: Path) -> None:
    from cxr_edge.engine.tensorrt_build import TENSORRT_MISSING, import_tensorrt

    try:
        import_tensorrt()
        pytest.skip("TensorRT is installed here")
    except CxrEdgeError:
        pass
    with pytest.raises(CxrEdgeError) as info:
        trt_backend.TensorRtBackend(tmp_path / "x.plan")
    assert str(info.value) == TENSORRT_MISSING


# --- the run path over a fake TensorRT + CUDA --------------------------------------------------


MEMORY = fake_cuda.MEMORY
FakeBuffer = fake_cuda.FakeBuffer


class FakeStream(fake_cuda.FakeStream):
    """The backend's own stream is 77."""

    def __init__(self, external: object = None) -> None:
        super().__init__(77 if external is None else external)


WEIGHTS = np.linspace(-1.0, 1.0, 14 * 64 * 64).reshape(14, 64 * 64).astype(np.float32)


class FakeContext:
    """'Engine': logits = patches (flattened) @ WEIGHTS.T; records every call and every address
    it was given, and refuses (like TensorRT) an address that is not 256-byte aligned."""

    def __init__(self, profile: BatchProfile) -> None:
        self.profile = profile
        self.shape: tuple[int, ...] | None = None
        self.addresses: dict[str, int] = {}
        self.bound: list[tuple[str, int]] = []
        self.calls: list[int] = []

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        if not self.profile.min <= shape[0] <= self.profile.max:
            return False
        self.shape = shape
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.bound.append((name, ptr))
        if ptr % 256:
            return False
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream: int) -> bool:
        assert stream == 77 and self.shape is not None
        rows = self.shape[0]
        x = MEMORY.view(self.addresses["patches"], rows * 64 * 64 * 4).view(np.float32).reshape(rows, -1)
        MEMORY.view(self.addresses["logits"], rows * 14 * 4)[:] = (
            (x @ WEIGHTS.T).astype(np.float32).view(np.uint8).ravel()
        )
        self.calls.append(rows)
        return True


def _install_fakes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, profile: BatchProfile
) -> tuple[Path, list]:
    contexts: list[FakeContext] = []

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i: int) -> str:
            return ["patches", "logits"][i]

        def get_tensor_mode(self, name: str) -> str:
            return "in" if name == "patches" else "out"

        def get_tensor_dtype(self, name: str) -> str:
            return "float"

        def create_execution_context(self) -> FakeContext:
            contexts.append(FakeContext(profile))
            return contexts[-1]

    class Runtime:
        def __init__(self, logger: object) -> None:
            self.DLA_core = -1

        def deserialize_cuda_engine(self, blob: bytes) -> Engine | None:
            return Engine() if blob == b"fake plan" else None

    fake_trt = SimpleNamespace(
        __version__="10.3.0.30",
        Runtime=Runtime,
        TensorIOMode=SimpleNamespace(INPUT="in", OUTPUT="out"),
        DataType=SimpleNamespace(FLOAT="float"),
    )
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: fake_trt)
    monkeypatch.setattr(trt_backend, "make_logger", lambda: object())
    monkeypatch.setattr(trt_backend, "DeviceBuffer", FakeBuffer)
    monkeypatch.setattr(trt_backend, "PinnedBuffer", fake_cuda.FakePinned)
    monkeypatch.setattr(trt_backend, "Event", fake_cuda.FakeEvent)
    monkeypatch.setattr(trt_backend, "Stream", FakeStream)
    monkeypatch.setattr(trt_backend, "set_device", lambda index: None)
    monkeypatch.setattr(trt_backend, "copy_device", fake_cuda.copy_device)
    fake_cuda.LOG.clear()
    monkeypatch.setattr(trt_backend, "device_info", lambda index: GpuInfo(0, "Orin", "8.7", 1 << 34))

    plan = tmp_path / "fake.plan"
    plan.write_bytes(b"fake plan")
    manifest = EngineManifest(
        tensorrt_version="10.3.0.30",
        gpu_name="Orin",
        compute_capability="8.7",
        precision="fp16",
        profile=profile,
        onnx_file="m.onnx",
        onnx_sha256="0" * 64,
        plan_sha256=sha256_file(plan),
        metadata=ModelMetadata(precision="fp16"),
        dla_core=0 if profile.fixed else None,
    )
    write_manifest(plan, manifest)
    return plan, contexts


def _patches(count: int) -> np.ndarray:
    return np.random.default_rng(count).random((count, 1, 64, 64), dtype=np.float32)


@pytest.mark.parametrize("profile", [BatchProfile(1, 128, 128), BatchProfile(128, 128, 128)])
@pytest.mark.parametrize("count", [1, 128, 300])
def test_run_chunks_and_matches_reference(monkeypatch, tmp_path, profile: BatchProfile, count: int) -> None:
    plan, contexts = _install_fakes(monkeypatch, tmp_path, profile)
    patches = _patches(count)
    expected = patches.reshape(count, -1).astype(np.float64) @ WEIGHTS.T.astype(np.float64)
    with trt_backend.TensorRtBackend(plan) as backend:
        logits = backend.run(patches)
        assert backend.max_batch == 128 and backend.metadata.precision == "fp16"
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-3)
    calls = contexts[0].calls
    if profile.fixed:
        assert calls == [128] * (-(-count // 128))  # every call is the fixed batch (zero padded)
    else:
        assert sum(calls) == count and max(calls) <= 128


def test_run_device_keeps_all_logits_on_device(monkeypatch, tmp_path) -> None:
    plan, _ = _install_fakes(monkeypatch, tmp_path, BatchProfile(128, 128, 128))
    patches = _patches(300)
    backend = trt_backend.TensorRtBackend(plan, stream=SimpleNamespace(handle=77))
    on_device = backend.run_device(patches)
    assert (on_device.rows, on_device.num_classes, on_device.stream) == (300, 14, 77)
    device_logits = MEMORY.view(on_device.ptr, 300 * 14 * 4).view(np.float32).reshape(300, 14)
    host = backend.run(patches)
    np.testing.assert_allclose(device_logits, host, rtol=0, atol=0)
    # into a caller's buffer (the CUDA postprocess's logits area), at an offset
    caller = FakeBuffer((10 + 300) * 14 * 4)
    placed = backend.run_device(patches, out_ptr=caller.ptr + 10 * 14 * 4)
    assert placed.ptr == caller.ptr + 10 * 14 * 4
    written = MEMORY.view(caller.ptr, caller.nbytes).view(np.float32).reshape(310, 14)
    assert np.array_equal(written[10:], host) and not written[:10].any()


@pytest.mark.parametrize(
    "profile, chunk",
    [(BatchProfile(1, 128, 128), 128), (BatchProfile(1, 64, 128), 64), (BatchProfile(128, 128, 128), 128)],
)
def test_chunk_size_is_the_profiles_batch(monkeypatch, tmp_path, profile: BatchProfile, chunk: int) -> None:
    from cxr_edge.backends.base import DeviceBackend

    plan, _ = _install_fakes(monkeypatch, tmp_path, profile)
    backend = trt_backend.TensorRtBackend(plan)
    assert isinstance(backend, DeviceBackend)
    assert backend.chunk_patches == chunk and backend.stream_handle == 77
    assert backend.input_address() % 256 == 0


@pytest.mark.parametrize("offset", [560, 56, 4, 0, 256 * 7])
def test_every_tensor_address_is_256_byte_aligned(monkeypatch, tmp_path, offset: int) -> None:
    """A caller's logits address at any 4-byte offset (560 = 10 rows of 14 classes): TensorRT
    only ever sees aligned addresses; a misaligned target gets the chunk through the aligned
    scratch buffer and a device-to-device copy, an aligned one is written directly."""
    plan, contexts = _install_fakes(monkeypatch, tmp_path, BatchProfile(1, 128, 128))
    backend = trt_backend.TensorRtBackend(plan)
    patches = _patches(300)
    want = backend.run(patches)
    fake_cuda.LOG.clear()
    caller = FakeBuffer(offset + 300 * 14 * 4 + 1024)
    MEMORY.view(caller.ptr, caller.nbytes)[:] = 0xAB  # guard: nothing outside the rows changes
    backend.run_device(patches, out_ptr=caller.ptr + offset)
    written = MEMORY.view(caller.ptr + offset, 300 * 14 * 4).view(np.float32).reshape(300, 14)
    assert np.array_equal(written, want)
    assert np.all(MEMORY.view(caller.ptr, offset) == 0xAB)
    assert np.all(MEMORY.view(caller.ptr + offset + 300 * 14 * 4, 1024) == 0xAB)
    assert contexts[0].bound and all(ptr % 256 == 0 for _, ptr in contexts[0].bound)
    copies = [op for op in fake_cuda.LOG if op[0] == "copy_d2d"]
    targets = [caller.ptr + offset + start * 14 * 4 for start in (0, 128, 256)]
    expected = [t for t in targets if t % 256]
    assert [op[2] for op in copies] == expected  # exactly the misaligned chunks were copied
    assert all(op[1] == 77 for op in copies)


def test_run_device_input_runs_on_the_patches_in_the_input_buffer(monkeypatch, tmp_path) -> None:
    """The device path: patches already at input_address() (the tile kernel put them there)."""
    plan, contexts = _install_fakes(monkeypatch, tmp_path, BatchProfile(1, 128, 128))
    backend = trt_backend.TensorRtBackend(plan)
    patches = _patches(100)
    MEMORY.floats(backend.input_address(), patches.shape)[...] = patches
    out = FakeBuffer(100 * 14 * 4)
    fake_cuda.LOG.clear()
    backend.run_device_input(100, out.ptr)
    expected = patches.reshape(100, -1).astype(np.float64) @ WEIGHTS.T.astype(np.float64)
    np.testing.assert_allclose(MEMORY.floats(out.ptr, (100, 14)), expected, rtol=1e-4, atol=1e-3)
    assert contexts[0].calls == [100] and contexts[0].addresses["logits"] == out.ptr  # direct
    assert not [op for op in fake_cuda.LOG if op[0].startswith("upload")]  # no host copy at all
    with pytest.raises(CxrEdgeError, match=r"129 patches per engine call; this plan takes 1\.\.128"):
        backend.run_device_input(129, out.ptr)


def test_fixed_batch_pads_with_zeros_and_never_writes_past_the_rows(monkeypatch, tmp_path) -> None:
    plan, contexts = _install_fakes(monkeypatch, tmp_path, BatchProfile(128, 128, 128))
    backend = trt_backend.TensorRtBackend(plan)
    MEMORY.floats(backend.input_address(), (128, 1, 64, 64))[...] = 5.0  # stale patches
    patches = _patches(40)
    MEMORY.floats(backend.input_address(), patches.shape)[...] = patches
    out = FakeBuffer(40 * 14 * 4 + 512)
    MEMORY.view(out.ptr, out.nbytes)[:] = 0xAB
    backend.run_device_input(40, out.ptr)
    assert contexts[0].calls == [128]
    assert not MEMORY.floats(backend.input_address() + 40 * 64 * 64 * 4, (88, 64 * 64)).any()
    expected = patches.reshape(40, -1).astype(np.float64) @ WEIGHTS.T.astype(np.float64)
    np.testing.assert_allclose(MEMORY.floats(out.ptr, (40, 14)), expected, rtol=1e-4, atol=1e-3)
    assert np.all(MEMORY.view(out.ptr + 40 * 14 * 4, 512) == 0xAB)


def test_host_patches_reach_the_device_from_pinned_memory(monkeypatch, tmp_path) -> None:
    """Two pinned staging buffers alternate; before one is refilled, the event of its last copy
    is waited for (chunk 3 waits for chunk 1's copy). No pageable upload of patches."""
    plan, _ = _install_fakes(monkeypatch, tmp_path, BatchProfile(1, 128, 128))
    backend = trt_backend.TensorRtBackend(plan)
    backend.run(_patches(300))
    ops = [
        op for op in fake_cuda.LOG if op[0] in ("upload_pinned", "upload_pageable", "record", "event_sync")
    ]
    assert [op[0] for op in ops] == ["upload_pinned", "record"] * 2 + [
        "event_sync",
        "upload_pinned",
        "record",
    ]
    first_event = ops[1][2]
    assert ops[4] == ("event_sync", first_event)
    assert [op[3] for op in ops if op[0] == "upload_pinned"] == [128 * 64 * 64 * 4] * 2 + [44 * 64 * 64 * 4]
    staging = list(backend._staging)
    assert len(staging) == 2
    backend.close()
    assert all(pinned.freed for pinned, _ in staging) and backend._staging == []


def test_run_rejects_wrong_patch_shape(monkeypatch, tmp_path) -> None:
    plan, _ = _install_fakes(monkeypatch, tmp_path, BatchProfile(1, 128, 128))
    backend = trt_backend.TensorRtBackend(plan)
    with pytest.raises(CxrEdgeError, match=r"\(N, 1, 64, 64\)"):
        backend.run(np.zeros((4, 64, 64), np.float32))


def test_foreign_or_tampered_plan_is_refused(monkeypatch, tmp_path) -> None:
    plan, _ = _install_fakes(monkeypatch, tmp_path, BatchProfile(1, 128, 128))
    monkeypatch.setattr(
        trt_backend, "device_info", lambda index: GpuInfo(0, "NVIDIA H100 80GB HBM3", "9.0", 1)
    )
    with pytest.raises(
        CxrEdgeError, match="built for GPU 'Orin'.*rebuild it here with: cxr-edge build-engine"
    ):
        trt_backend.TensorRtBackend(plan)
    monkeypatch.setattr(trt_backend, "device_info", lambda index: GpuInfo(0, "Orin", "8.7", 1))
    plan.write_bytes(b"fake plan, changed")
    with pytest.raises(CxrEdgeError, match="does not match its manifest"):
        trt_backend.TensorRtBackend(plan)


# --- building over a fake TensorRT builder: the plan is checked before it is written ----------


class FakeTensor:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name, self.shape = name, shape


class FakeNetwork:
    num_inputs = 1
    num_outputs = 1

    def get_input(self, index: int) -> FakeTensor:
        return FakeTensor("patches", (-1, 1, 64, 64))

    def get_output(self, index: int) -> FakeTensor:
        return FakeTensor("logits", (-1, 14))


class FakeConfig:
    def __init__(self) -> None:
        self.flags: list[object] = []
        self.default_device_type: object = None
        self.DLA_core = -1

    def set_memory_pool_limit(self, pool: object, size: int) -> None:
        pass

    def add_optimization_profile(self, profile: object) -> int:
        return 0

    def set_flag(self, flag: object) -> None:
        self.flags.append(flag)

    def create_timing_cache(self, blob: bytes) -> SimpleNamespace:
        return SimpleNamespace(serialize=lambda: b"timing cache")

    def set_timing_cache(self, cache: object, ignore_mismatch: bool) -> bool:
        return True


class FakeBuilder:
    num_DLA_cores = 0

    def __init__(self, logger: object) -> None:
        pass

    def create_network(self, flags: int) -> FakeNetwork:
        return FakeNetwork()

    def create_builder_config(self) -> FakeConfig:
        return FakeConfig()

    def create_optimization_profile(self) -> SimpleNamespace:
        return SimpleNamespace(set_shape=lambda *shapes: None)

    def build_serialized_network(self, network: object, config: object) -> bytes:
        return b"fake plan"  # the fake runtime deserializes exactly this into the WEIGHTS engine


class FakeParser:
    num_errors = 0

    def __init__(self, network: object, logger: object) -> None:
        pass

    def parse_from_file(self, path: str) -> bool:
        return True


def _gemm_onnx(path: Path, weights: np.ndarray, precision: str) -> Path:
    """logits = flatten(patches) @ weights.T: what the fake engine computes (with WEIGHTS)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from cxr_edge.metadata import write_onnx_metadata

    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["patches"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "w"], ["logits"], transB=1),
        ],
        "gemm",
        [helper.make_tensor_value_info("patches", TensorProto.FLOAT, ["N", 1, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 14])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    write_onnx_metadata(model, ModelMetadata(precision=precision))
    onnx.save(model, str(path))
    return path


def _install_builder_fakes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import cxr_edge.engine.tensorrt_build as build_module
    import cxr_edge.gpu as gpu_module

    _install_fakes(monkeypatch, tmp_path, BatchProfile(1, 128, 128))
    fake = sys.modules["tensorrt"]
    for name, value in {
        "Builder": FakeBuilder,
        "OnnxParser": FakeParser,
        "NetworkDefinitionCreationFlag": SimpleNamespace(STRONGLY_TYPED=0),
        "BuilderFlag": SimpleNamespace(FP16=0, INT8=1, GPU_FALLBACK=2),
        "MemoryPoolType": SimpleNamespace(WORKSPACE=0),
        "DeviceType": SimpleNamespace(GPU=0, DLA=1),
        "Dims": list,
    }.items():
        setattr(fake, name, value)
    monkeypatch.setattr(build_module, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(build_module, "make_logger", lambda: object())
    monkeypatch.setattr(gpu_module, "set_device", lambda index: None)
    monkeypatch.setattr(gpu_module, "device_info", lambda index: GpuInfo(0, "Orin", "8.7", 1 << 34))


def test_build_writes_a_plan_that_matches_its_reference(monkeypatch, tmp_path) -> None:
    from cxr_edge.engine.manifest import read_manifest
    from cxr_edge.engine.plan_check import plan_vs_onnx
    from cxr_edge.engine.tensorrt_build import BuildOptions, build_engine

    _install_builder_fakes(monkeypatch, tmp_path)
    source = _gemm_onnx(tmp_path / "m.fp16.onnx", WEIGHTS, "fp16")
    reference = _gemm_onnx(tmp_path / "m.onnx", WEIGHTS, "fp32")
    plan = tmp_path / "engines" / "m-fp16.plan"
    manifest, check = build_engine(
        BuildOptions(onnx=source, precision="fp16", out=plan, max_patches=128),
        check=plan_vs_onnx(reference, _patches(256)),
    )
    assert check.passed and check.count == 4 * 14 and check.max_abs_diff < 1e-3  # 4 copies x 14 classes
    assert plan.read_bytes() == b"fake plan" and read_manifest(plan) == manifest
    assert manifest.precision == "fp16" and manifest.plan_sha256 == sha256_file(plan)


def test_build_refuses_to_write_a_plan_that_differs_from_float32(monkeypatch, tmp_path) -> None:
    from cxr_edge.engine.plan_check import plan_vs_onnx
    from cxr_edge.engine.tensorrt_build import BuildOptions, PlanCheckFailed, build_engine

    _install_builder_fakes(monkeypatch, tmp_path)
    source = _gemm_onnx(tmp_path / "m.fp16.onnx", WEIGHTS, "fp16")
    # a float32 model 5 % off the engine: beyond the fp16 tolerance (2 % + 0.05)
    reference = _gemm_onnx(tmp_path / "m.onnx", WEIGHTS * 1.05, "fp32")
    engines = tmp_path / "engines"
    with pytest.raises(PlanCheckFailed, match=r"plan not written: max \|diff\| .* FAILED"):
        build_engine(
            BuildOptions(onnx=source, precision="fp16", out=engines / "m-fp16.plan", max_patches=128),
            check=plan_vs_onnx(reference, _patches(256)),
        )
    assert list(engines.iterdir()) == []  # no plan, no manifest, no timing cache, no .part file


def test_build_engine_command_checks_the_plan_and_exits_3(monkeypatch, tmp_path) -> None:
    from typer.testing import CliRunner

    from cxr_edge.cli import app

    _install_builder_fakes(monkeypatch, tmp_path)
    onnx = _gemm_onnx(tmp_path / "m.onnx", WEIGHTS, "fp32")
    plan = tmp_path / "engines" / "m-fp32.plan"
    args = [
        "build-engine",
        "--onnx",
        str(onnx),
        "--precision",
        "fp32",
        "--max-patches",
        "128",
        "--out",
        str(plan),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"plan vs {onnx}: image logits max |diff|" in result.output and "passed" in result.output
    assert plan.is_file() and plan.with_suffix(".json").is_file()

    plan.unlink()
    plan.with_suffix(".json").unlink()
    wrong = _gemm_onnx(tmp_path / "wrong.onnx", WEIGHTS * 0.9, "fp32")
    result = CliRunner().invoke(app, [*args, "--reference", str(wrong)])
    assert result.exit_code == 3
    assert "plan vs ONNX check failed, plan not written" in result.output
    assert not plan.exists() and not plan.with_suffix(".json").exists()


def test_dla_without_dla_support_is_one_line(monkeypatch, tmp_path) -> None:
    from cxr_edge.engine.tensorrt_build import BuildOptions, build_engine

    _install_builder_fakes(monkeypatch, tmp_path)
    source = _gemm_onnx(tmp_path / "m.fp16.onnx", WEIGHTS, "fp16")
    options = BuildOptions(
        onnx=source, precision="fp16", out=tmp_path / "m.plan", dla_core=0, max_patches=128
    )
    with pytest.raises(
        CxrEdgeError, match=r"TensorRT 10.3.0.30 on this device offers no DLA .*11.0-11.3 have none"
    ):
        build_engine(options, check=lambda plan, manifest: pytest.fail("no build without DLA"))
    monkeypatch.setattr(FakeBuilder, "num_DLA_cores", 1)
    with pytest.raises(CxrEdgeError, match="--dla-core 1: this device has 1 DLA core"):
        build_engine(
            BuildOptions(onnx=source, precision="fp16", out=tmp_path / "m.plan", dla_core=1),
            check=lambda p, m: pytest.fail(),
        )


# --- real TensorRT on a real GPU ---------------------------------------------------------------


@pytest.mark.gpu
def test_tensorrt_fp32_matches_onnxruntime_on_gpu(tmp_path, request) -> None:
    from cxr_edge.engine.tensorrt_build import BuildOptions, build_engine, import_tensorrt
    from cxr_edge.gpu import device_info

    try:
        import_tensorrt()
        device_info(0)
    except CxrEdgeError as exc:
        pytest.skip(str(exc))
    tiny_onnx = request.getfixturevalue("tiny_onnx")  # only once TensorRT is known to be here
    from cxr_edge.backends.onnxruntime import OnnxRuntimeBackend
    from cxr_edge.engine.plan_check import plan_vs_onnx

    plan = tmp_path / "engines" / "tiny-fp32.plan"
    _, check = build_engine(
        BuildOptions(onnx=tiny_onnx, precision="fp32", out=plan, max_patches=128, workspace_mb=512),
        check=plan_vs_onnx(tiny_onnx, _patches(256)),
    )
    assert check.passed
    patches = _patches(200)
    with trt_backend.TensorRtBackend(plan) as backend:
        got = backend.run(patches)
    expected = OnnxRuntimeBackend(tiny_onnx).run(patches)
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2 * float(np.abs(expected).max()))
