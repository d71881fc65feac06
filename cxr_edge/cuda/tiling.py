"""The model-frame image on the GPU, tiled there straight into an engine's input buffer.

``CudaDeviceImage(image_size, patch_size)`` implements ``backends.base.DeviceImage``: ``upload``
copies one ``(N, N) float32`` image (1 MiB at N = 512) through pinned memory to the device, once
per image; ``tile`` launches the tile kernel for a range of shifts on the caller's stream (the
engine's), writing ``(count*G*G, 1, P, P) float32`` patches at any 16-byte aligned address. The
host never holds the S*S*G*G patches (4 GiB at S = 64).
"""

from __future__ import annotations

import numpy as np

from cxr_edge.cuda.kernels import CudaKernels, load_kernels, tile_params
from cxr_edge.errors import CxrEdgeError
from cxr_edge.gpu import DeviceBuffer, Event, PinnedBuffer, Stream


class CudaDeviceImage:
    """One model-frame image in device memory, with its pinned staging copy; reused per image."""

    def __init__(self, image_size: int, patch_size: int, library: str | None = None) -> None:
        self.kernels: CudaKernels = load_kernels(library)
        self.image_size, self.patch_size = image_size, patch_size
        nbytes = image_size * image_size * 4
        self._host: PinnedBuffer | None = None
        self._device: DeviceBuffer | None = None
        self._copied: Event | None = None
        try:
            self._host = PinnedBuffer(nbytes)
            self._device = DeviceBuffer(nbytes)
            self._copied = Event()
        except Exception:
            self.close()
            raise

    def upload(self, image: np.ndarray, stream: int) -> None:
        """Copy ``image (N, N)`` (float32 in [0, 1]) to the device on ``stream`` (asynchronous)."""
        assert self._host is not None and self._device is not None and self._copied is not None
        n = self.image_size
        image = np.asarray(image)
        if image.shape != (n, n):
            raise CxrEdgeError(None, f"model-frame image must be ({n}, {n}), got {image.shape}")
        self._copied.synchronize()  # the previous image's copy has left the staging buffer
        np.copyto(self._host.array(np.float32, (n, n)), image, casting="same_kind")
        self._host.upload_to(self._device.ptr, self._device.nbytes, Stream(stream))
        self._copied.record(stream)

    def tile(self, steps: int, first_shift: int, count: int, out_ptr: int, stream: int) -> None:
        """Patches of shifts ``first_shift .. first_shift + count - 1`` (tile.py's order) to
        ``out_ptr``: ``(count*G*G, 1, P, P) float32``, enqueued on ``stream`` after the upload."""
        assert self._device is not None
        params = tile_params(
            self.image_size, self.patch_size, steps, first_shift, first_shift + count, np.float32
        )
        self.kernels.tile(params, self._device.ptr, out_ptr, stream)

    def close(self) -> None:
        """Free the device and pinned memory (waits for the last upload); idempotent."""
        if self._copied is not None:
            self._copied.synchronize()
            self._copied.close()
            self._copied = None
        for buffer in (self._device, self._host):
            if buffer is not None:
                buffer.free()
        self._device = self._host = None
