"""The interfaces backends implement: run a patch batch, return patch logits (host or device).

A backend knows nothing of shifts or saliency: it maps patches to logits. The pipeline finds
out what a backend can do through these runtime-checkable protocols, never by sniffing names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cxr_edge.metadata import ModelMetadata

#: Patches per chunk for a backend that does not say (``ChunkedBackend``): 256 patches = 4
#: shifted 512x512 copies, 16 MiB of input; keeps peak memory bounded for any S.
DEFAULT_CHUNK_PATCHES = 256
#: File suffixes of a TensorRT plan (lower case); any other model file is an ONNX file.
PLAN_SUFFIXES = (".plan", ".engine")


@runtime_checkable
class PatchBackend(Protocol):
    """Runs the patch backbone.

    ``run(patches)``: ``(N, 1, P, P) float32 in [0, 1]`` -> ``(N, C) float32`` logits, for any
    N >= 1 (a backend chunks internally when N exceeds what it can take at once).
    ``metadata`` is the model's metadata; ``name`` a short id for reports ("onnxruntime-cpu");
    ``thread_safe``: whether ``run`` may be called from several threads at once (the pipeline
    serialises calls to a backend that says False).
    """

    metadata: ModelMetadata
    name: str
    thread_safe: bool

    def run(self, patches: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class ChunkedBackend(PatchBackend, Protocol):
    """A backend that says how many patches one call should carry: the pipeline tiles chunks of
    ``chunk_patches`` (rounded down to whole shifted copies) instead of its default."""

    chunk_patches: int


@runtime_checkable
class DeviceBackend(ChunkedBackend, Protocol):
    """A GPU backend whose input and output can stay on the device (``TensorRtBackend``; a
    PyTorch one in tools/ for proofs on machines without TensorRT).

    Device path, all on ``stream_handle`` in this order: something writes up to
    ``chunk_patches`` patches ``(rows, 1, P, P) float32`` at ``input_address()`` (the CUDA tile
    kernel), then ``run_device_input(rows, out_ptr)`` runs the model on them and writes
    ``(rows, C) float32`` logits at ``out_ptr``. Not thread-safe: one input buffer.
    """

    @property
    def stream_handle(self) -> int:
        """The ``cudaStream_t`` everything of this backend is enqueued on."""
        ...

    def input_address(self) -> int:
        """Device address (256-byte aligned) of the ``(chunk_patches, 1, P, P) float32`` input
        buffer that ``run_device_input`` reads."""
        ...

    def run_device_input(self, rows: int, out_ptr: int) -> None:
        """Run the model on the first ``rows`` patches at ``input_address()``, writing
        ``(rows, C) float32`` logits at device address ``out_ptr`` (any 4-byte alignment);
        asynchronous on ``stream_handle``."""
        ...

    def run_device(self, patches: np.ndarray, out_ptr: int | None = None) -> Any:
        """Like ``run`` with host patches, writing ``(N, C) float32`` logits to device address
        ``out_ptr``; asynchronous on the backend's stream."""
        ...

    def synchronize(self) -> None:
        """Wait for everything the backend enqueued."""
        ...


@runtime_checkable
class DeviceImage(Protocol):
    """One model-frame image held on the GPU and tiled there into an engine's input buffer
    (``cxr_edge.cuda.tiling.CudaDeviceImage``). One image at a time; reused for the next."""

    def upload(self, image: np.ndarray, stream: int) -> None:
        """Copy ``image (N, N) float32`` to the device, asynchronously on ``stream``."""
        ...

    def tile(self, steps: int, first_shift: int, count: int, out_ptr: int, stream: int) -> None:
        """Write the patches of shifts ``first_shift .. first_shift + count - 1`` (tile.py's
        order) as ``(count*G*G, 1, P, P) float32`` at ``out_ptr``, on ``stream``."""
        ...

    def close(self) -> None:
        """Free what it holds; idempotent."""
        ...


#: ``factory(image_size, patch_size) -> DeviceImage``.
DeviceImageFactory = Callable[[int, int], DeviceImage]


@runtime_checkable
class Closeable(Protocol):
    """Something that holds resources until ``close()`` (a TensorRT backend's device buffers)."""

    def close(self) -> None: ...
