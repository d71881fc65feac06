"""CPU stand-ins for cxr_edge.gpu's device memory, pinned memory, streams and events.

Device memory is numpy bytes at fake addresses (allocations 256-byte aligned, like cudaMalloc);
"asynchronous" work runs at once, and every call that orders work is appended to ``LOG`` as a
tuple, so tests can check what was enqueued on which stream, in which order, and how many host
syncs an image costs.
"""

from __future__ import annotations

import numpy as np

from cxr_edge.gpu import stream_handle

#: ("op", stream or event id, ...) in call order; tests clear it.
LOG: list[tuple[object, ...]] = []


class FakeMemory:
    """Device memory as numpy byte arrays at fake, 256-byte aligned addresses."""

    def __init__(self) -> None:
        self.blocks: dict[int, np.ndarray] = {}
        self.next = 1 << 20

    def alloc(self, nbytes: int) -> int:
        ptr = self.next
        self.blocks[ptr] = np.zeros(nbytes, np.uint8)
        self.next += (nbytes + 4096 + 255) // 256 * 256
        return ptr

    def view(self, ptr: int, nbytes: int) -> np.ndarray:
        for base, block in self.blocks.items():
            if base <= ptr and ptr + nbytes <= base + block.size:
                return block[ptr - base : ptr - base + nbytes]
        raise AssertionError(f"access outside any allocation: {ptr:#x} + {nbytes}")

    def floats(self, ptr: int, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        return self.view(ptr, count * 4).view(np.float32).reshape(shape)


MEMORY = FakeMemory()


def copy_device(src: int, dst: int, nbytes: int, stream: object) -> None:
    MEMORY.view(dst, nbytes)[:] = MEMORY.view(src, nbytes)
    LOG.append(("copy_d2d", stream_handle(stream), dst, nbytes))


class FakeBuffer:
    """cxr_edge.gpu.DeviceBuffer."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.ptr = MEMORY.alloc(nbytes)

    def upload(self, host: np.ndarray, stream: object) -> None:
        MEMORY.view(self.ptr, host.nbytes)[:] = np.ascontiguousarray(host).view(np.uint8).ravel()
        LOG.append(("upload_pageable", stream_handle(stream), host.nbytes))

    def download(self, host: np.ndarray, stream: object) -> None:
        assert host.flags.c_contiguous
        host.view(np.uint8).reshape(-1)[:] = MEMORY.view(self.ptr, host.nbytes)

    def zero(self, stream: object, offset: int = 0, nbytes: int | None = None) -> None:
        count = self.nbytes - offset if nbytes is None else nbytes
        MEMORY.view(self.ptr + offset, count)[:] = 0
        LOG.append(("zero", stream_handle(stream), offset, count))

    def free(self) -> None:
        self.ptr = 0

    def __enter__(self) -> FakeBuffer:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()


class FakePinned:
    """cxr_edge.gpu.PinnedBuffer: host bytes; copies log as pinned copies."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.host = np.zeros(nbytes, np.uint8)
        self.freed = False

    def array(self, dtype: object, shape: tuple[int, ...]) -> np.ndarray:
        dt = np.dtype(dtype)  # type: ignore[call-overload]
        count = int(np.prod(shape))
        return self.host[: count * dt.itemsize].view(dt).reshape(shape)

    def upload_to(self, device_ptr: int, nbytes: int, stream: object, offset: int = 0) -> None:
        MEMORY.view(device_ptr, nbytes)[:] = self.host[offset : offset + nbytes]
        LOG.append(("upload_pinned", stream_handle(stream), device_ptr, nbytes))

    def download_from(self, device_ptr: int, nbytes: int, stream: object, offset: int = 0) -> None:
        self.host[offset : offset + nbytes] = MEMORY.view(device_ptr, nbytes)
        LOG.append(("download_pinned", stream_handle(stream), nbytes))

    def free(self) -> None:
        self.freed = True


class FakeStream:
    """cxr_edge.gpu.Stream: an owned one gets a fresh id."""

    created = 100

    def __init__(self, external: object = None) -> None:
        if external is None:
            FakeStream.created += 1
            self.handle = FakeStream.created
        else:
            self.handle = stream_handle(external)

    def synchronize(self) -> None:
        LOG.append(("sync", self.handle))

    def close(self) -> None:
        LOG.append(("stream_close", self.handle))


class FakeEvent:
    """cxr_edge.gpu.Event."""

    created = 0

    def __init__(self) -> None:
        FakeEvent.created += 1
        self.id = f"event{FakeEvent.created}"
        self.recorded = False

    def record(self, stream: int) -> None:
        self.recorded = True
        LOG.append(("record", stream, self.id))

    def wait(self, stream: int) -> None:
        LOG.append(("wait", stream, self.id))

    def synchronize(self) -> None:
        if self.recorded:
            LOG.append(("event_sync", self.id))

    def close(self) -> None:
        LOG.append(("event_close", self.id))


class FakeKernels:
    """cxr_edge.cuda.kernels.CudaKernels over fake memory: tile = tile.tile_shifts, postprocess =
    the numpy SaliencyAccumulator (float32 logits), the shared-memory check with a given limit."""

    path = "fake-libcxr_edge_cuda.so"

    def __init__(self, shared_limit: int = 232448) -> None:
        self.shared_limit = shared_limit

    def shift_offsets(self, steps: int, patch_size: int) -> np.ndarray:
        from cxr_edge.tile import shift_offsets

        return shift_offsets(steps, patch_size)

    def check_shared_memory(self, params: object) -> None:
        from cxr_edge.cuda.kernels import shared_memory_problem
        from cxr_edge.errors import CxrEdgeError

        problem = shared_memory_problem(params, self.shared_limit)  # type: ignore[arg-type]
        if problem:
            raise CxrEdgeError(None, problem)

    def workspace_bytes(self, params: object, raw: bool, scaled: bool) -> int:
        return 256

    def tile(self, params: object, image_ptr: int, out_ptr: int, stream: int = 0) -> None:
        from cxr_edge.tile import shift_pairs, tile_shifts

        n, p = params.image_size, params.patch_size  # type: ignore[attr-defined]
        k0, k1 = params.shift_begin, params.shift_end  # type: ignore[attr-defined]
        assert out_ptr % 16 == 0, "the tile kernel needs 16-byte aligned output"
        image = MEMORY.floats(image_ptr, (n, n)).copy()
        patches = tile_shifts(image, shift_pairs(params.steps, p)[k0:k1], p)  # type: ignore[attr-defined]
        MEMORY.floats(out_ptr, patches.shape)[...] = patches
        LOG.append(("tile", stream, k0, k1 - k0))

    def postprocess(self, params: object, buffers: object, stream: int = 0) -> None:
        from cxr_edge.postprocess import SaliencyAccumulator
        from cxr_edge.tile import shift_pairs

        n, p, s, c = params.image_size, params.patch_size, params.steps, params.num_classes  # type: ignore[attr-defined]
        g = n // p
        logits = MEMORY.floats(buffers.logits, (s * s * g * g, c)).copy()  # type: ignore[attr-defined]
        acc = SaliencyAccumulator(s, n, p, c)
        acc.add(shift_pairs(s, p), logits)
        maps = acc.finish([str(k) for k in range(c)])
        MEMORY.floats(buffers.image_logits, (c,))[...] = maps.logits  # type: ignore[attr-defined]
        MEMORY.floats(buffers.probabilities, (c,))[...] = maps.probabilities  # type: ignore[attr-defined]
        MEMORY.floats(buffers.raw, (c, n, n))[...] = maps.raw  # type: ignore[attr-defined]
        MEMORY.floats(buffers.scaled, (c, n, n))[...] = maps.scaled  # type: ignore[attr-defined]
        LOG.append(("postprocess", stream))


def install(monkeypatch: object, kernels: FakeKernels | None = None) -> FakeKernels:
    """Point cxr_edge.cuda.postprocess and cxr_edge.cuda.tiling at these fakes."""
    import cxr_edge.cuda.postprocess as post
    from cxr_edge.cuda import tiling

    kernels = kernels or FakeKernels()
    for module in (post, tiling):
        monkeypatch.setattr(module, "load_kernels", lambda library=None: kernels)  # type: ignore[attr-defined]
        monkeypatch.setattr(module, "DeviceBuffer", FakeBuffer)  # type: ignore[attr-defined]
        monkeypatch.setattr(module, "PinnedBuffer", FakePinned)  # type: ignore[attr-defined]
        monkeypatch.setattr(module, "Stream", FakeStream)  # type: ignore[attr-defined]
        monkeypatch.setattr(module, "Event", FakeEvent)  # type: ignore[attr-defined]
    monkeypatch.setattr(post, "copy_device", copy_device)  # type: ignore[attr-defined]
    return kernels
