"""TensorRT backend: runs a verified plan on one large patch batch, chunked by the plan's profile.

Device buffers and the stream are made once (cuda-python); I/O is bound by tensor name
(``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``, every bool checked).
``run`` copies logits back to the host; ``run_device`` leaves them on the device for the CUDA
postprocess; ``run_device_input`` runs on patches already in the engine's input buffer (written
there by the CUDA tile kernel), so nothing but the image crosses the bus. Every address handed to
``set_tensor_address`` is 256-byte aligned (TensorRT's requirement): an output address that is
not goes through the aligned chunk buffer and a device-to-device copy. Host patches reach the
device from pinned memory (two alternating staging buffers). Needs TensorRT, cuda-python and a
GPU; importing this module needs none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_edge.engine.manifest import EngineManifest, read_manifest, verify_manifest
from cxr_edge.engine.profile import plan_chunks
from cxr_edge.engine.tensorrt_build import import_tensorrt, make_logger
from cxr_edge.errors import CxrEdgeError
from cxr_edge.gpu import (
    TENSOR_ALIGNMENT,
    DeviceBuffer,
    Event,
    PinnedBuffer,
    Stream,
    copy_device,
    device_info,
    is_aligned,
    set_device,
)
from cxr_edge.metadata import ModelMetadata

if TYPE_CHECKING:
    import tensorrt as trt

_FLOAT32_BYTES = 4


@dataclass(frozen=True)
class DeviceLogits:
    """Patch logits left on the GPU: ``(rows, num_classes) float32`` row-major at ``ptr``.

    Valid until the next ``run``/``run_device`` on the same backend; ordered on ``stream``.
    """

    ptr: int
    rows: int
    num_classes: int
    stream: int


class TensorRtBackend:
    """PatchBackend over a TensorRT plan; refuses a plan whose manifest does not fit this machine."""

    name = "tensorrt"
    #: One execution context and reused device buffers: calls must not overlap.
    thread_safe = False

    def __init__(
        self, plan: str | Path, *, stream: Any = None, device: int = 0, manifest: EngineManifest | None = None
    ) -> None:
        """``manifest``: the plan's manifest when it is not (yet) beside the plan (the builder's check)."""
        import_tensorrt()
        import tensorrt as trt

        self.plan = Path(plan)
        if not self.plan.is_file():
            raise CxrEdgeError(self.plan, "no such TensorRT plan; build one with 'cxr-edge build-engine'")
        self.manifest: EngineManifest = manifest if manifest is not None else read_manifest(self.plan)
        set_device(device)
        gpu = device_info(device)
        verify_manifest(
            self.manifest,
            self.plan,
            tensorrt_version=str(trt.__version__),
            gpu_name=gpu.name,
            compute_capability=gpu.compute_capability,
        )
        self.metadata: ModelMetadata = self.manifest.metadata
        self.profile = self.manifest.profile
        self.max_batch = self.profile.max
        #: Patches per engine call the pipeline should tile (``ChunkedBackend``): the profile's
        #: opt (its one size for a DLA fixed batch).
        self.chunk_patches = min(self.profile.opt, self.profile.max)

        self._logger = make_logger()
        self._runtime = trt.Runtime(self._logger)
        if self.manifest.dla_core is not None:
            self._runtime.DLA_core = self.manifest.dla_core
        engine = self._runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if engine is None:
            raise CxrEdgeError(self.plan, f"TensorRT could not deserialize this plan; {self._rebuild()}")
        self._engine: trt.ICudaEngine = engine
        context = engine.create_execution_context()
        if context is None:
            raise CxrEdgeError(
                self.plan, "TensorRT could not create an execution context (out of GPU memory?)"
            )
        self._context: trt.IExecutionContext = context
        self._input, self._output = self._io_names(trt)

        self.stream = Stream(stream)
        patch = self.metadata.patch_size
        self._patch_bytes = patch * patch * _FLOAT32_BYTES
        self._row_bytes = self.metadata.num_classes * _FLOAT32_BYTES
        self._d_input = DeviceBuffer(self.profile.max * self._patch_bytes)
        self._d_chunk_output = DeviceBuffer(self.profile.max * self._row_bytes)
        self._d_logits: DeviceBuffer | None = None  # grown on demand by run_device
        for buffer in (self._d_input, self._d_chunk_output):
            if not is_aligned(buffer.ptr):
                raise CxrEdgeError(
                    self.plan, f"device buffer at {buffer.ptr:#x} is not {TENSOR_ALIGNMENT}-byte aligned"
                )
        # Host patches: two pinned staging buffers, each with the event of its last copy.
        self._staging: list[tuple[PinnedBuffer, Event]] = []
        self._next_staging = 0

    def _rebuild(self) -> str:
        return f"rebuild it with: {self.manifest.rebuild_command(self.plan)}"

    def _io_names(self, trt: Any) -> tuple[str, str]:
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise CxrEdgeError(self.plan, f"expected one input and one output tensor, found {names}")
        for name in names:
            if self._engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise CxrEdgeError(self.plan, f"tensor '{name}' is not float32 I/O; {self._rebuild()}")
        return inputs[0], outputs[0]

    def _check_patches(self, patches: np.ndarray) -> np.ndarray:
        patch = self.metadata.patch_size
        if patches.ndim != 4 or patches.shape[1:] != (1, patch, patch):
            raise CxrEdgeError(None, f"patch batch must be (N, 1, {patch}, {patch}), got {patches.shape}")
        return np.ascontiguousarray(patches, dtype=np.float32)

    @property
    def stream_handle(self) -> int:
        """The ``cudaStream_t`` every copy and engine call of this backend is enqueued on."""
        return self.stream.handle

    def input_address(self) -> int:
        """The engine's ``(max_batch, 1, P, P) float32`` input buffer (256-byte aligned)."""
        return self._d_input.ptr

    def _stage(self, host_rows: np.ndarray) -> None:
        """Copy host patches to the start of the input buffer through pinned memory: the host
        fills one staging buffer while the previous chunk's copy leaves the other."""
        if not self._staging:
            self._staging = [(PinnedBuffer(self._d_input.nbytes), Event()) for _ in range(2)]
        pinned, copied = self._staging[self._next_staging]
        self._next_staging ^= 1
        copied.synchronize()  # this buffer's previous copy has reached the device
        pinned.array(np.float32, host_rows.shape)[...] = host_rows
        pinned.upload_to(self._d_input.ptr, host_rows.nbytes, self.stream)
        copied.record(self.stream.handle)

    def _bind(self, name: str, ptr: int) -> None:
        if not is_aligned(ptr):  # TensorRT needs 256-byte aligned tensors; callers route around
            raise CxrEdgeError(
                self.plan, f"address {ptr:#x} of '{name}' is not {TENSOR_ALIGNMENT}-byte aligned"
            )
        if not self._context.set_tensor_address(name, ptr):
            raise CxrEdgeError(self.plan, f"TensorRT refused the address of '{name}'")

    def run_device_input(self, rows: int, out_ptr: int) -> None:
        """Run the engine on the first ``rows`` patches of ``input_address()`` (written there on
        ``stream_handle``), writing ``(rows, C) float32`` logits at ``out_ptr``; asynchronous.

        A fixed-batch (DLA) profile runs ``profile.min`` rows: the tail is zeroed. The engine
        writes straight to ``out_ptr`` when it is 256-byte aligned and no padding rows would
        land behind it, else into the aligned chunk buffer, copied to ``out_ptr`` on the device.
        """
        patch = self.metadata.patch_size
        if not 1 <= rows <= self.profile.max:
            raise CxrEdgeError(
                self.plan, f"{rows} patches per engine call; this plan takes 1..{self.profile.max}"
            )
        run_rows = self.profile.run_rows(rows)
        if run_rows > rows:
            self._d_input.zero(self.stream, rows * self._patch_bytes, (run_rows - rows) * self._patch_bytes)
        direct = run_rows == rows and is_aligned(out_ptr)
        target = out_ptr if direct else self._d_chunk_output.ptr
        if not self._context.set_input_shape(self._input, (run_rows, 1, patch, patch)):
            raise CxrEdgeError(self.plan, f"TensorRT refused input shape ({run_rows}, 1, {patch}, {patch})")
        self._bind(self._input, self._d_input.ptr)
        self._bind(self._output, target)
        if not self._context.execute_async_v3(self.stream.handle):
            raise CxrEdgeError(self.plan, "TensorRT execute_async_v3 failed")
        if not direct:
            copy_device(self._d_chunk_output.ptr, out_ptr, rows * self._row_bytes, self.stream)

    def run(self, patches: np.ndarray) -> np.ndarray:
        """``(N, 1, P, P) float32`` -> ``(N, C) float32`` logits on the host (one copy back)."""
        on_device = self.run_device(patches)
        logits = np.empty((on_device.rows, self.metadata.num_classes), dtype=np.float32)
        assert self._d_logits is not None
        self._d_logits.download(logits, self.stream)
        self.stream.synchronize()
        return logits

    def run_device(self, patches: np.ndarray, out_ptr: int | None = None) -> DeviceLogits:
        """Like ``run`` but the ``(N, C) float32`` logits stay on the device (no copy back).

        ``out_ptr``: a device address with room for N*C float32 (e.g. the CUDA postprocess's
        ``logits_address(first_shift)``), any alignment; default: a backend-owned buffer reused
        across calls.
        """
        patches = self._check_patches(patches)
        total = patches.shape[0]
        if out_ptr is None:
            needed = max(total, 1) * self._row_bytes
            if self._d_logits is None or self._d_logits.nbytes < needed:
                if self._d_logits is not None:
                    self.stream.synchronize()
                    self._d_logits.free()
                self._d_logits = DeviceBuffer(needed)
            out_ptr = self._d_logits.ptr
        for chunk in plan_chunks(total, self.profile):
            self._stage(patches[chunk.start : chunk.stop])
            self.run_device_input(chunk.rows, out_ptr + chunk.start * self._row_bytes)
        return DeviceLogits(out_ptr, total, self.metadata.num_classes, self.stream.handle)

    def synchronize(self) -> None:
        """Wait for everything enqueued on the backend's stream (e.g. before another stream reads
        logits left on the device by ``run_device``)."""
        self.stream.synchronize()

    def close(self) -> None:
        """Free device and pinned buffers, events and an owned stream (idempotent)."""
        self.stream.synchronize()
        for buffer in (self._d_input, self._d_chunk_output, self._d_logits):
            if buffer is not None:
                buffer.free()
        for pinned, copied in self._staging:
            pinned.free()
            copied.close()
        self._staging = []
        self.stream.close()

    def __enter__(self) -> TensorRtBackend:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
