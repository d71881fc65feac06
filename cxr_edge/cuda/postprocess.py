"""GPU twin of ``postprocess.SaliencyAccumulator``: patch logits stay on the device.

``GpuPostprocess(steps, image_size, patch_size, num_classes)`` has the accumulator interface the
pipeline uses (``add(pairs, logits)`` with host logits, ``finish(labels) -> SaliencyMaps``) and a
device path for a GPU engine: ``logits_address(first_shift)`` is where the engine writes the
logits of shift ``first_shift`` onwards, ``wait_for(stream)`` orders the postprocess after the
engine's stream (a CUDA event, no host sync), ``run()`` launches the fused postprocess,
``overlay()`` draws RGB overlays from the device maps. One object serves one image at a time and
is reused for the next image of the same S (``reset``): its device buffers, pinned host buffers,
stream and event live until ``close``. Device memory and streams come from ``cxr_edge.gpu``
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
from cxr_edge.gpu import DeviceBuffer, Event, PinnedBuffer, Stream, copy_device
from cxr_edge.postprocess import SaliencyMaps, check_map_kind
from cxr_edge.tile import shift_index


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
    """The device buffers of one image's postprocess; reset and reused across images of one S.

    Device memory: logits ``(S*S*G*G, C)`` in ``logits_dtype``, shift logits ``(S*S, C)``, maps
    ``2 * (C, N, N) float32`` (followed by a copy of the unshifted patch logits) and the
    kernels' workspace (``cxr_postprocess_workspace_bytes``: about ``2 * C*S*G*N float32``,
    29 MB at S=64, C=14). Pinned host memory: the downloaded
    results (maps, logits, probabilities: 29 MB at C=14) and, once host logits are added, a
    staging copy of them. Refuses at construction a class count whose column pass does not fit
    the device's opt-in shared memory. Not thread-safe: one image at a time (the pipeline keeps a
    pool of them, one per concurrent ``predict``).
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
        self.kernels.check_shared_memory(self.params)
        self.shifts = steps * steps
        self._buffers: list[DeviceBuffer | PinnedBuffer] = []
        self._staging: PinnedBuffer | None = None  # host logits for add(), made on first use
        self._ready: Event | None = None
        self.stream = Stream(stream)
        n, c = image_size, num_classes

        def alloc(nbytes: int) -> DeviceBuffer:
            buf = DeviceBuffer(nbytes)
            self._buffers.append(buf)
            return buf

        try:
            self._ready = Event()
            self.logits = alloc(self.shifts * self.grid * self.grid * c * self.logits_dtype.itemsize)
            self.shift_logits = alloc(self.shifts * c * 4)
            # image logits, probabilities, raw, scaled (float32), then the unshifted copy's
            # patch logits (logits_dtype): everything finish downloads, in one piece.
            patch_bytes = self.grid * self.grid * c * self.logits_dtype.itemsize
            self.results = alloc((2 * c + 2 * c * n * n) * 4 + patch_bytes)
            self.workspace = alloc(self.kernels.workspace_bytes(self.params, True, True))
            self.host_results = PinnedBuffer(self.results.nbytes)
            self._buffers.append(self.host_results)
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
    def image_logits_address(self) -> int:
        return int(self.results.ptr)

    @property
    def probabilities_address(self) -> int:
        return int(self.results.ptr) + self.num_classes * 4

    @property
    def raw_address(self) -> int:
        return int(self.results.ptr) + 2 * self.num_classes * 4

    @property
    def scaled_address(self) -> int:
        return self.raw_address + self.num_classes * self.image_size**2 * 4

    @property
    def patch_logits_address(self) -> int:
        """Where ``finish`` copies the unshifted copy's patch logits, after the scaled maps."""
        return self.scaled_address + self.num_classes * self.image_size**2 * 4

    # -- accumulator interface (host logits) -------------------------------------------------
    def add(self, pairs: np.ndarray, logits: np.ndarray) -> None:
        """Upload patch logits of K whole shifts: pairs ``(K, 2)``, logits ``(K*G*G, C)``.

        The rows go through a pinned staging copy (each shift has its own place in it, so no
        copy waits for another) and are uploaded asynchronously on this object's stream."""
        pairs = np.asarray(pairs)
        per_shift = self.grid * self.grid
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise CxrEdgeError(None, f"pairs must be (K, 2), got shape {pairs.shape}")
        logits = np.asarray(logits)
        if logits.shape != (len(pairs) * per_shift, self.num_classes):
            raise CxrEdgeError(
                None, f"logits must be ({len(pairs) * per_shift}, {self.num_classes}), got {logits.shape}"
            )
        try:
            ks = shift_index(pairs, self.steps, self.patch_size)
        except ValueError:
            raise CxrEdgeError(
                None, f"a shift is not one of the {self.steps}-step offsets {self.offsets.tolist()}"
            ) from None
        if len(np.unique(ks)) != len(ks) or self._seen[ks].any():
            raise CxrEdgeError(None, "a shift was added twice")
        if self._staging is None:
            self._staging = PinnedBuffer(self.logits.nbytes)
            self._buffers.append(self._staging)
        staged = self._staging.array(self.logits_dtype, (self.shifts, per_shift, self.num_classes))
        staged[ks] = logits.reshape(len(ks), per_shift, self.num_classes)
        shift_bytes = per_shift * self.num_classes * self.logits_dtype.itemsize
        # One copy per run of consecutive shifts (iter_patch_batches yields them in order).
        start = 0
        while start < len(ks):
            end = start + 1
            while end < len(ks) and ks[end] == ks[end - 1] + 1:
                end += 1
            first = int(ks[start])
            self._staging.upload_to(
                self.logits_address(first),
                (end - start) * shift_bytes,
                self.stream,
                offset=first * shift_bytes,
            )
            start = end
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

    def wait_for(self, stream: int) -> None:
        """Order this postprocess after everything enqueued on ``stream`` so far (the engine's):
        an event recorded there, waited for on this object's stream. No host sync."""
        assert self._ready is not None
        self._ready.record(stream)
        self._ready.wait(self.stream.handle)

    def run(self, raw: bool = True, scaled: bool = True) -> None:
        """Launch the fused postprocess on ``self.stream`` (asynchronous)."""
        if not self._seen.all():
            raise CxrEdgeError(None, f"only {int(self._seen.sum())} of {self.shifts} shifts were added")
        buffers = PostprocessBuffers(
            self.logits.ptr,
            self.shift_logits.ptr,
            self.image_logits_address,
            self.probabilities_address,
            self.raw_address if raw else None,
            self.scaled_address if scaled else None,
            self.workspace.ptr,
        )
        self.kernels.postprocess(self.params, buffers, self.stream.handle)

    def finish(self, labels: Sequence[str]) -> SaliencyMaps:
        """Run the postprocess and download everything as a ``SaliencyMaps``: one download into
        pinned memory and the image's one host sync. The unshifted copy's patch logits are
        copied on the device next to the maps first, so the one download carries them too.

        Progressive levels (``SaliencyAccumulator.finish_level``) are not implemented on the
        device: ``CxrEdge.predict_progressive`` uses the numpy accumulator."""
        labels = tuple(labels)
        if len(labels) != self.num_classes:
            raise CxrEdgeError(None, f"{len(labels)} labels for {self.num_classes} classes")
        self.run()
        c, n, g = self.num_classes, self.image_size, self.grid
        # Rows k0*G*G .. of the logits buffer (k0: the (0, 0) shift), (G*G, C) in its dtype.
        zero = int(np.flatnonzero(np.asarray(self.offsets) == 0)[0])
        patch_bytes = g * g * c * self.logits_dtype.itemsize
        copy_device(
            self.logits_address(zero * self.steps + zero), self.patch_logits_address, patch_bytes, self.stream
        )
        self.host_results.download_from(self.results.ptr, self.results.nbytes, self.stream)
        self.stream.synchronize()
        floats = 2 * c + 2 * c * n * n
        host = self.host_results.array(np.float32, (floats,))
        maps = host[2 * c :].reshape(2, c, n, n)
        raw_bytes = self.host_results.array(np.uint8, (self.results.nbytes,))
        unshifted = raw_bytes[floats * 4 : floats * 4 + patch_bytes].view(self.logits_dtype).reshape(g * g, c)
        # Copies: the pinned buffer is this object's and is overwritten by the next image.
        return SaliencyMaps(
            self.steps,
            labels,
            host[:c].copy(),
            host[c : 2 * c].copy(),
            maps[0].copy(),
            maps[1].copy(),
            np.ascontiguousarray(unshifted.astype(np.float32).T.reshape(c, g, g)),
        )

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

        The overlay kernel's formula (``render.overlay`` up to one level, see its tests; one vmax
        per class); call after ``run``/``finish``, before the next image.
        """
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
        """Free the device and pinned buffers, the event and the stream if this object created
        it; idempotent."""
        stream = getattr(self, "stream", None)
        if stream is not None and stream.handle:
            stream.synchronize()  # nothing may still be writing into what is freed
        for buf in getattr(self, "_buffers", []):
            buf.free()
        self._buffers = []
        ready = getattr(self, "_ready", None)
        if ready is not None:
            ready.close()
            self._ready = None
        if stream is not None:
            stream.close()

    def __enter__(self) -> GpuPostprocess:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
