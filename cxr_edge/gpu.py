"""Small cuda-python helpers: checked runtime calls, device and pinned buffers, streams, events,
device facts.

Everything imports ``cuda`` lazily, so this module is importable on a CPU-only machine; the
first call that needs CUDA raises ``CxrEdgeError`` with a one-line reason when it is missing.
Works with cuda-python 12.x (``cuda.cudart``) and 12.6+/13.x (``cuda.bindings.runtime``).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from cxr_edge.errors import CxrEdgeError

_INSTALL_HINT = "install cuda-python ('pip install cuda-python') on a machine with an NVIDIA driver"


def cuda_runtime() -> ModuleType:
    """The cuda-python runtime module (``cudart``); CxrEdgeError when cuda-python is absent."""
    try:
        from cuda.bindings import runtime

        module: ModuleType = runtime
        return module
    except ImportError:
        pass
    try:
        from cuda import cudart  # cuda-python < 12.6 layout

        legacy: ModuleType = cudart
        return legacy
    except ImportError as exc:
        raise CxrEdgeError(None, f"cuda-python is not installed; {_INSTALL_HINT}") from exc


def check(result: Any, what: str) -> Any:
    """Unwrap a cuda-python call result ``(err, *values)``; raise CxrEdgeError unless success.

    Returns None, the single value, or a tuple of values.
    """
    rt = cuda_runtime()
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if int(err) != int(rt.cudaError_t.cudaSuccess):
        name_err, name = rt.cudaGetErrorName(err)
        text_err, text = rt.cudaGetErrorString(err)
        detail = (name.decode() if isinstance(name, bytes) else str(name)) if int(name_err) == 0 else str(err)
        message = (text.decode() if isinstance(text, bytes) else str(text)) if int(text_err) == 0 else ""
        raise CxrEdgeError(None, f"CUDA call {what} failed: {detail} ({message})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def stream_handle(stream: Any) -> int:
    """Integer ``cudaStream_t`` of a caller's stream.

    Accepts an int, a cuda-python ``cudaStream_t``/``CUstream`` (``int()`` gives the address),
    a pycuda ``Stream`` (``.handle``), a CuPy/cuda.core stream (``.ptr`` / ``.handle``) or our Stream.
    """
    if isinstance(stream, bool):
        raise CxrEdgeError(None, "a stream handle must be an integer or a CUDA stream object, not a bool")
    if isinstance(stream, int):
        return stream
    for attribute in ("handle", "ptr"):
        value = getattr(stream, attribute, None)
        if value is not None and not callable(value):
            return stream_handle(value)
    try:
        return int(stream)
    except (TypeError, ValueError) as exc:
        raise CxrEdgeError(None, f"cannot take a CUDA stream handle from {type(stream).__name__}") from exc


class Stream:
    """A CUDA stream: wraps a caller's handle (not destroyed here) or creates and owns one."""

    def __init__(self, external: Any = None) -> None:
        if external is None:
            rt = cuda_runtime()
            created = check(
                rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags"
            )
            self.handle = int(created)
            self.owned = True
        else:
            self.handle = stream_handle(external)
            self.owned = False

    def synchronize(self) -> None:
        check(cuda_runtime().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.owned and self.handle:
            check(cuda_runtime().cudaStreamDestroy(self.handle), "cudaStreamDestroy")
        self.handle = 0
        self.owned = False

    def __enter__(self) -> Stream:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DeviceBuffer:
    """``nbytes`` of device memory, allocated once; ``ptr`` is the integer device address."""

    def __init__(self, nbytes: int) -> None:
        if nbytes <= 0:
            raise CxrEdgeError(None, f"device buffer size must be positive, got {nbytes} bytes")
        self.nbytes = int(nbytes)
        self.ptr = int(check(cuda_runtime().cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})"))

    def upload(self, host: np.ndarray, stream: Stream) -> None:
        """Async host -> device copy of a C-contiguous array that fits in this buffer."""
        _check_fits(host, self.nbytes)
        rt = cuda_runtime()
        check(
            rt.cudaMemcpyAsync(
                self.ptr,
                host.ctypes.data,
                host.nbytes,
                rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                stream.handle,
            ),
            "cudaMemcpyAsync(host->device)",
        )

    def download(self, host: np.ndarray, stream: Stream) -> None:
        """Async device -> host copy into a C-contiguous array; synchronize before reading it."""
        _check_fits(host, self.nbytes)
        rt = cuda_runtime()
        check(
            rt.cudaMemcpyAsync(
                host.ctypes.data,
                self.ptr,
                host.nbytes,
                rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                stream.handle,
            ),
            "cudaMemcpyAsync(device->host)",
        )

    def zero(self, stream: Stream, offset: int = 0, nbytes: int | None = None) -> None:
        """Async zero of ``nbytes`` (default: to the end) from byte ``offset``."""
        count = self.nbytes - offset if nbytes is None else nbytes
        if offset < 0 or count < 0 or offset + count > self.nbytes:
            raise CxrEdgeError(
                None, f"zeroing bytes {offset}..{offset + count} of a {self.nbytes}-byte buffer"
            )
        if count:
            check(
                cuda_runtime().cudaMemsetAsync(self.ptr + offset, 0, count, stream.handle), "cudaMemsetAsync"
            )

    def free(self) -> None:
        if self.ptr:
            check(cuda_runtime().cudaFree(self.ptr), "cudaFree")
            self.ptr = 0

    def __enter__(self) -> DeviceBuffer:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()


class PinnedBuffer:
    """``nbytes`` of page-locked host memory (``cudaMallocHost``): copies from and to it run
    asynchronously at full bus speed (a pageable copy is staged and serialised by the driver).

    ``array(dtype, shape)`` views it as numpy; ``upload_to``/``download_from`` copy to and from
    device addresses on a stream. Reusing it before a copy finished is the caller's to prevent
    (record an ``Event`` after the copy and ``synchronize`` it first).
    """

    def __init__(self, nbytes: int) -> None:
        if nbytes <= 0:
            raise CxrEdgeError(None, f"pinned buffer size must be positive, got {nbytes} bytes")
        self.nbytes = int(nbytes)
        self.ptr = int(check(cuda_runtime().cudaMallocHost(self.nbytes), f"cudaMallocHost({self.nbytes})"))

    def array(self, dtype: np.dtype | type, shape: tuple[int, ...]) -> np.ndarray:
        """A numpy view ``shape`` of ``dtype`` over the start of the buffer (no copy)."""
        dt = np.dtype(dtype)
        count = int(np.prod(shape)) if shape else 1
        if count * dt.itemsize > self.nbytes or not self.ptr:
            raise CxrEdgeError(None, f"{shape} {dt} does not fit a {self.nbytes}-byte pinned buffer")
        raw = (ctypes.c_ubyte * (count * dt.itemsize)).from_address(self.ptr)
        view: np.ndarray = np.frombuffer(memoryview(raw), dtype=dt, count=count).reshape(shape)
        return view

    def upload_to(self, device_ptr: int, nbytes: int, stream: Stream, offset: int = 0) -> None:
        """Async copy of ``nbytes`` from byte ``offset`` of this buffer to ``device_ptr``."""
        self._check_range(offset, nbytes)
        rt = cuda_runtime()
        kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(
            rt.cudaMemcpyAsync(device_ptr, self.ptr + offset, nbytes, kind, stream.handle),
            "cudaMemcpyAsync(pinned->device)",
        )

    def download_from(self, device_ptr: int, nbytes: int, stream: Stream, offset: int = 0) -> None:
        """Async copy of ``nbytes`` from ``device_ptr`` to byte ``offset`` of this buffer."""
        self._check_range(offset, nbytes)
        rt = cuda_runtime()
        kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(
            rt.cudaMemcpyAsync(self.ptr + offset, device_ptr, nbytes, kind, stream.handle),
            "cudaMemcpyAsync(device->pinned)",
        )

    def _check_range(self, offset: int, nbytes: int) -> None:
        if offset < 0 or nbytes < 0 or offset + nbytes > self.nbytes:
            raise CxrEdgeError(
                None, f"bytes {offset}..{offset + nbytes} are outside a {self.nbytes}-byte pinned buffer"
            )

    def free(self) -> None:
        if self.ptr:
            check(cuda_runtime().cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


class Event:
    """A CUDA event without timing: ``record(stream)`` marks the work enqueued on ``stream`` so
    far; ``wait(stream)`` makes another stream wait for it on the GPU (no host sync);
    ``synchronize()`` waits on the host."""

    def __init__(self) -> None:
        rt = cuda_runtime()
        self._event = check(
            rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming), "cudaEventCreateWithFlags"
        )
        self.recorded = False

    def record(self, stream: int) -> None:
        check(cuda_runtime().cudaEventRecord(self._event, stream), "cudaEventRecord")
        self.recorded = True

    def wait(self, stream: int) -> None:
        """Work enqueued on ``stream`` after this call starts once the recorded work is done."""
        check(cuda_runtime().cudaStreamWaitEvent(stream, self._event, 0), "cudaStreamWaitEvent")

    def synchronize(self) -> None:
        """Block the host until the recorded work is done (returns at once if never recorded)."""
        if self.recorded:
            check(cuda_runtime().cudaEventSynchronize(self._event), "cudaEventSynchronize")

    def close(self) -> None:
        if self._event is not None:
            check(cuda_runtime().cudaEventDestroy(self._event), "cudaEventDestroy")
            self._event = None


#: TensorRT requires every tensor address to be aligned to this many bytes.
TENSOR_ALIGNMENT = 256


def is_aligned(ptr: int, alignment: int = TENSOR_ALIGNMENT) -> bool:
    return ptr % alignment == 0


def copy_device(src: int, dst: int, nbytes: int, stream: Stream) -> None:
    """Async device -> device copy of ``nbytes`` on ``stream``."""
    rt = cuda_runtime()
    kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
    check(rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream.handle), "cudaMemcpyAsync(device->device)")


def _check_fits(host: np.ndarray, capacity: int) -> None:
    if not host.flags.c_contiguous:
        raise CxrEdgeError(None, "host array for a CUDA copy must be C-contiguous")
    if host.nbytes > capacity:
        raise CxrEdgeError(
            None, f"host array of {host.nbytes} bytes does not fit a {capacity}-byte device buffer"
        )


@dataclass(frozen=True)
class GpuInfo:
    """Facts that decide whether a TensorRT plan runs here: name and compute capability."""

    index: int
    name: str
    compute_capability: str  # "major.minor", e.g. "8.7" for Jetson Orin
    total_memory_bytes: int


def device_info(index: int = 0) -> GpuInfo:
    """Describe CUDA device ``index``; CxrEdgeError when there is no usable GPU."""
    rt = cuda_runtime()
    count = int(check(rt.cudaGetDeviceCount(), "cudaGetDeviceCount"))
    if index < 0 or index >= count:
        raise CxrEdgeError(None, f"CUDA device {index} does not exist ({count} device(s) visible)")
    props = check(rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    raw_name = props.name
    name = raw_name.decode(errors="replace") if isinstance(raw_name, bytes) else str(raw_name)
    return GpuInfo(
        index=index,
        name=name.split("\x00", 1)[0].strip(),
        compute_capability=f"{int(props.major)}.{int(props.minor)}",
        total_memory_bytes=int(props.totalGlobalMem),
    )


def set_device(index: int) -> None:
    check(cuda_runtime().cudaSetDevice(index), "cudaSetDevice")
