"""GPU twin of ``postprocess.SaliencyAccumulator``: patch logits stay on the device.

``GpuPostprocess(steps, image_size, patch_size, num_classes)`` has the accumulator interface the
pipeline uses (``add(pairs, logits)`` with host logits, ``finish(labels) -> SaliencyMaps``) and a
device path for a GPU engine: ``logits_address(first_shift)`` is where the engine writes the
logits of shift ``first_shift`` onwards, ``run()`` launches the fused postprocess, ``overlay()``
draws RGB overlays from the device maps. Device memory and streams come from ``cxr_edge.gpu``
(cuda-python).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cxr_edge.cuda.kernels import (
    CudaKernels,
    PostprocessBuffers,
    PostprocessParams,
    dtype_code,
    load_kernels,
    overlay_params,
)
from cxr_edge.errors import CxrEdgeError
from cxr_edge.postprocess import SaliencyMaps, check_map_kind


def gpu_postprocess_available() -> bool:
    """True when the kernel library loads, cuda-python imports and a CUDA device is visible."""
    try:
        kernels = load_kernels()
        from cxr_edge.gpu import cuda_runtime

        cuda_runtime()
        return kernels.device_count() > 0
    except CxrEdgeError:
        return False


def gpu_accumulator_factory() -> Callable[[int, int, int, int], GpuPostprocess] | None:
    """``GpuPostprocess`` as a pipeline accumulator factory, or None (use the numpy one)."""
    return GpuPostprocess if gpu_postprocess_available() else None


class GpuPostprocess:
    """Holds the device buffers of one image's postprocess; reuse it across images of one S.

    Device memory: logits ``(S*S*G*G, C)`` in ``logits_dtype``, shift logits ``(S*S, C)``, maps
    ``2 * (C, N, N) float32`` and a workspace ``2 * C*S*G*N float32`` (29 MB + 29 MB at S=64, C=14).
    """

    def __init__(
        self,
        steps: int,
        image_size: int,
        patch_size: int,
        num_classes: int,
        stream: Any = None,
        logits_dtype: Any = np.float32,
        library: str | None = None,
    ) -> None:
        from cxr_edge.gpu import DeviceBuffer, Stream

        self.kernels: CudaKernels = load_kernels(library)
        self.steps, self.image_size, self.patch_size, self.num_classes = (
            steps,
            image_size,
            patch_size,
            num_classes,
        )
        self.grid = image_size // patch_size
        self.logits_dtype = np.dtype(logits_dtype)
        self.params = PostprocessParams(
            image_size, patch_size, steps, num_classes, dtype_code(self.logits_dtype)
        )
        self.offsets = self.kernels.shift_offsets(steps, patch_size)  # also validates the geometry
        self.shifts = steps * steps
        self._buffers: list[DeviceBuffer] = []
        self.stream = Stream(stream)
        n, c = image_size, num_classes

        def alloc(nbytes: int) -> DeviceBuffer:
            buf = DeviceBuffer(nbytes)
            self._buffers.append(buf)
            return buf

        try:
            self.logits = alloc(self.shifts * self.grid * self.grid * c * self.logits_dtype.itemsize)
            self.shift_logits = alloc(self.shifts * c * 4)
            self.image_logits = alloc(c * 4)
            self.probabilities = alloc(c * 4)
            self.maps = alloc(2 * c * n * n * 4)  # raw then scaled
            self.workspace = alloc(self.kernels.workspace_bytes(self.params, True, True))
        except Exception:
            self.close()
            raise
        self._seen = np.zeros(self.shifts, dtype=bool)

    # -- device addresses -------------------------------------------------------------------
    def logits_address(self, first_shift: int = 0) -> int:
        """Device address of the logits rows of shift ``first_shift`` (row ``k*G*G``)."""
        if not 0 <= first_shift < self.shifts:
            raise CxrEdgeError(None, f"shift {first_shift} is outside 0..{self.shifts - 1}")
        row_bytes = self.num_classes * self.logits_dtype.itemsize
        return int(self.logits.ptr + first_shift * self.grid * self.grid * row_bytes)

    @property
    def raw_address(self) -> int:
        return int(self.maps.ptr)

    @property
    def scaled_address(self) -> int:
        return int(self.maps.ptr) + self.num_classes * self.image_size**2 * 4

    # -- accumulator interface (host logits) -------------------------------------------------
    def add(self, pairs: np.ndarray, logits: np.ndarray) -> None:
        """Upload patch logits of K whole shifts: pairs ``(K, 2)``, logits ``(K*G*G, C)``."""
        from cxr_edge.gpu import check, cuda_runtime

        pairs = np.asarray(pairs)
        per_shift = self.grid * self.grid
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise CxrEdgeError(None, f"pairs must be (K, 2), got shape {pairs.shape}")
        logits = np.ascontiguousarray(logits, dtype=self.logits_dtype)
        if logits.shape != (len(pairs) * per_shift, self.num_classes):
            raise CxrEdgeError(
                None, f"logits must be ({len(pairs) * per_shift}, {self.num_classes}), got {logits.shape}"
            )
        rows = np.searchsorted(self.offsets, pairs[:, 0])
        cols = np.searchsorted(self.offsets, pairs[:, 1])
        rows_c, cols_c = np.minimum(rows, self.steps - 1), np.minimum(cols, self.steps - 1)
        if np.any(self.offsets[rows_c] != pairs[:, 0]) or np.any(self.offsets[cols_c] != pairs[:, 1]):
            raise CxrEdgeError(
                None, f"a shift is not one of the {self.steps}-step offsets {self.offsets.tolist()}"
            )
        ks = rows_c * self.steps + cols_c
        if len(np.unique(ks)) != len(ks) or self._seen[ks].any():
            raise CxrEdgeError(None, "a shift was added twice")
        rt = cuda_runtime()
        shift_bytes = per_shift * self.num_classes * self.logits_dtype.itemsize
        # One copy per run of consecutive shifts (iter_patch_batches yields them in order).
        start = 0
        while start < len(ks):
            end = start + 1
            while end < len(ks) and ks[end] == ks[end - 1] + 1:
                end += 1
            check(
                rt.cudaMemcpyAsync(
                    self.logits_address(int(ks[start])),
                    logits.ctypes.data + start * shift_bytes,
                    (end - start) * shift_bytes,
                    rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                    self.stream.handle,
                ),
                "cudaMemcpyAsync(logits)",
            )
            start = end
        # The host array must outlive the async copy.
        self.stream.synchronize()
        self._seen[ks] = True

    def mark_written(self, first_shift: int, count: int) -> None:
        """Declare that the engine wrote shifts ``first_shift .. first_shift + count - 1`` at
        ``logits_address(first_shift)`` itself (device path: no host copy)."""
        if count < 1 or not 0 <= first_shift <= self.shifts - count:
            raise CxrEdgeError(
                None, f"shifts {first_shift}..{first_shift + count - 1} are outside 0..{self.shifts - 1}"
            )
        self._seen[first_shift : first_shift + count] = True

    def mark_all_written(self) -> None:
        """Declare that the engine wrote all S*S shifts at ``logits_address()`` itself."""
        self._seen[:] = True

    def run(self, raw: bool = True, scaled: bool = True) -> None:
        """Launch the fused postprocess on ``self.stream`` (asynchronous)."""
        if not self._seen.all():
            raise CxrEdgeError(None, f"only {int(self._seen.sum())} of {self.shifts} shifts were added")
        buffers = PostprocessBuffers(
            self.logits.ptr,
            self.shift_logits.ptr,
            self.image_logits.ptr,
            self.probabilities.ptr,
            self.raw_address if raw else None,
            self.scaled_address if scaled else None,
            self.workspace.ptr,
        )
        self.kernels.postprocess(self.params, buffers, self.stream.handle)

    def finish(self, labels: Sequence[str]) -> SaliencyMaps:
        """Run the postprocess and download everything as a ``SaliencyMaps``."""
        labels = tuple(labels)
        if len(labels) != self.num_classes:
            raise CxrEdgeError(None, f"{len(labels)} labels for {self.num_classes} classes")
        self.run()
        c, n = self.num_classes, self.image_size
        logits = np.empty(c, dtype=np.float32)
        probabilities = np.empty(c, dtype=np.float32)
        maps = np.empty((2, c, n, n), dtype=np.float32)
        self.image_logits.download(logits, self.stream)
        self.probabilities.download(probabilities, self.stream)
        self.maps.download(maps, self.stream)
        self.stream.synchronize()
        return SaliencyMaps(self.steps, labels, logits, probabilities, maps[0], maps[1])

    def overlay(
        self,
        gray: np.ndarray,
        crop: Any,
        classes: Sequence[int],
        vmax: Sequence[float],
        map: str = "scaled",
        alpha_max: float = 0.6,
    ) -> np.ndarray:
        """RGB overlays of ``classes`` over ``gray (h, w) uint8``: ``(len(classes), h, w, 3) uint8``.

        Same formula as ``render.overlay`` (one vmax per class); call after ``run``/``finish``.
        """
        from cxr_edge.gpu import DeviceBuffer

        check_map_kind(map)
        gray = np.ascontiguousarray(gray)
        if gray.ndim != 2 or gray.dtype != np.uint8:
            raise CxrEdgeError(None, f"gray must be (h, w) uint8, got {gray.shape} {gray.dtype}")
        if any(not 0 <= int(k) < self.num_classes for k in classes):
            raise CxrEdgeError(None, f"overlay classes must be in 0..{self.num_classes - 1}")
        params = overlay_params(
            self.image_size, gray.shape, crop, [int(k) for k in classes], list(vmax), alpha_max
        )
        out = np.empty((len(classes), *gray.shape, 3), dtype=np.uint8)
        with DeviceBuffer(gray.nbytes) as d_gray, DeviceBuffer(out.nbytes) as d_out:
            d_gray.upload(gray, self.stream)
            maps_ptr = self.scaled_address if map == "scaled" else self.raw_address
            self.kernels.overlay(params, d_gray.ptr, maps_ptr, d_out.ptr, None, self.stream.handle)
            d_out.download(out, self.stream)
            self.stream.synchronize()
        return out

    def reset(self) -> None:
        """Forget which shifts were added, to reuse the buffers for the next image."""
        self._seen[:] = False

    def close(self) -> None:
        """Free the device buffers (and the stream if this object created it); idempotent. The
        pipeline closes every accumulator it opens."""
        for buf in getattr(self, "_buffers", []):
            buf.free()
        self._buffers = []
        if getattr(self, "stream", None) is not None:
            self.stream.close()

    def __enter__(self) -> GpuPostprocess:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
