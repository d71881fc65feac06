#!/usr/bin/env python3
"""Every CUDA kernel and the device-path objects on small shapes, for compute-sanitizer.

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 tools/sanitize_kernels.py

(tools/gpu_check.sh runs it under memcheck, racecheck and synccheck.) Shapes are small so the
sanitizers finish in seconds: N = 128 / 64 with P = 16, S up to 16, 3 classes, float32 and
float16. Every result is also checked against its numpy oracle (exit 1 on a mismatch), so a
sanitizer run that passes has exercised the kernels' real work. Needs cuda-python, a GPU and
libcxr_edge_cuda.so ($CXR_EDGE_CUDA_LIB or build/); no torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from cxr_edge.cuda.kernels import (
    PostprocessBuffers,
    PostprocessParams,
    dtype_code,
    load_kernels,
    overlay_params,
    tile_params,
)
from cxr_edge.cuda.postprocess import GpuPostprocess
from cxr_edge.cuda.tiling import CudaDeviceImage
from cxr_edge.gpu import DeviceBuffer, Stream, copy_device
from cxr_edge.postprocess import smooth_maps
from cxr_edge.preprocess import CropBox
from cxr_edge.render import overlay
from cxr_edge.tile import shift_pairs, tile_shifts

P = 16
CLASSES = 3


def check(ok: bool, what: str) -> None:
    if not ok:
        print(f"sanitize_kernels: MISMATCH in {what}", file=sys.stderr)
        raise SystemExit(1)


def upload(host: np.ndarray, stream: Stream, keep: list[DeviceBuffer]) -> DeviceBuffer:
    buf = DeviceBuffer(max(host.nbytes, 4))
    buf.upload(np.ascontiguousarray(host), stream)
    keep.append(buf)
    return buf


def download(buf: DeviceBuffer, shape: tuple[int, ...], dtype: type, stream: Stream) -> np.ndarray:
    out: np.ndarray = np.empty(shape, dtype=dtype)
    buf.download(out, stream)
    stream.synchronize()
    return out


def tiles(kernels: object, stream: Stream, keep: list[DeviceBuffer]) -> None:
    rng = np.random.default_rng(0)
    for n, steps, k0, k1 in ((128, 4, 0, 16), (128, 16, 37, 101), (64, 2, 1, 4)):
        g = n // P
        image = rng.random((n, n), dtype=np.float32)
        d_image = upload(image, stream, keep)
        for dtype in (np.float32, np.float16):
            shape = ((k1 - k0) * g * g, 1, P, P)
            d_out = DeviceBuffer(int(np.prod(shape)) * np.dtype(dtype).itemsize)
            keep.append(d_out)
            kernels.tile(tile_params(n, P, steps, k0, k1, dtype), d_image.ptr, d_out.ptr, stream.handle)  # type: ignore[attr-defined]
            got = download(d_out, shape, dtype, stream)
            want = tile_shifts(image, shift_pairs(steps, P)[k0:k1], P).astype(dtype)
            check(
                np.array_equal(got.view(np.uint8), want.view(np.uint8)),
                f"tile n={n} S={steps} {dtype.__name__}",
            )


def postprocess(kernels: object, stream: Stream, keep: list[DeviceBuffer]) -> None:
    rng = np.random.default_rng(1)
    for n, steps, dtype, raw, scaled in (
        (128, 4, np.float32, True, True),
        (128, 16, np.float16, True, True),
        (64, 8, np.float32, True, False),
        (64, 8, np.float32, False, True),
    ):
        g = n // P
        logits = (rng.standard_normal((steps * steps * g * g, CLASSES)) * 2 - 9).astype(dtype)
        params = PostprocessParams(n, P, steps, CLASSES, dtype_code(dtype))
        d_logits = upload(logits, stream, keep)
        outs = [DeviceBuffer(size) for size in (steps * steps * CLASSES * 4, CLASSES * 4, CLASSES * 4)]
        maps = [DeviceBuffer(CLASSES * n * n * 4) for _ in range(2)]
        work = DeviceBuffer(max(kernels.workspace_bytes(params, raw, scaled), 4))  # type: ignore[attr-defined]
        keep.extend([*outs, *maps, work])
        buffers = PostprocessBuffers(
            d_logits.ptr,
            outs[0].ptr,
            outs[1].ptr,
            outs[2].ptr,
            maps[0].ptr if raw else None,
            maps[1].ptr if scaled else None,
            work.ptr,
        )
        kernels.postprocess(params, buffers, stream.handle)  # type: ignore[attr-defined]
        want_raw, want_scaled = smooth_maps(logits.astype(np.float64), steps, n, P)
        for wanted, buf, want, name in (
            (raw, maps[0], want_raw, "raw"),
            (scaled, maps[1], want_scaled, "scaled"),
        ):
            if wanted:
                got = download(buf, (CLASSES, n, n), np.float32, stream)
                check(
                    np.abs(got - want).max() <= 1e-5 * np.abs(want).max(),
                    f"postprocess {name} n={n} S={steps}",
                )


def overlays(kernels: object, stream: Stream, keep: list[DeviceBuffer]) -> None:
    rng = np.random.default_rng(2)
    n, shape, box = 64, (70, 90), CropBox(0, 10, 70)
    gray = rng.integers(0, 256, shape, dtype=np.uint8)
    maps = rng.standard_normal((2, n, n)).astype(np.float32)
    vmax = np.abs(maps).reshape(2, -1).max(axis=1).astype(np.float32)
    d_gray, d_maps, d_vmax = (
        upload(gray, stream, keep),
        upload(maps, stream, keep),
        upload(vmax, stream, keep),
    )
    d_out = DeviceBuffer(2 * shape[0] * shape[1] * 3)
    keep.append(d_out)
    params = overlay_params(n, shape, box, [1, 0], [float(vmax[1]), float(vmax[0])])
    for device_vmax in (None, d_vmax.ptr):
        kernels.overlay(params, d_gray.ptr, d_maps.ptr, d_out.ptr, device_vmax, stream.handle)  # type: ignore[attr-defined]
        got = download(d_out, (2, *shape, 3), np.uint8, stream)
        for o, m in enumerate((1, 0)):
            want = overlay(gray, maps[m], box, float(vmax[m])).astype(np.int16)
            check(np.abs(got[o].astype(np.int16) - want).max() <= 1, "overlay")


def device_path(library: str) -> None:
    """CudaDeviceImage -> tile into an 'engine input' -> an 'engine' (a copy of precomputed
    logits on its own stream) -> GpuPostprocess after an event; twice, reusing everything."""
    n, steps = 128, 4
    g = n // P
    engine = Stream()
    image = CudaDeviceImage(n, P, library)
    post = GpuPostprocess(steps, n, P, CLASSES, library=library)
    chunk = 3  # shifts per engine call
    d_input = DeviceBuffer(chunk * g * g * P * P * 4)
    rng = np.random.default_rng(3)
    try:
        for round_ in range(2):
            frame = rng.random((n, n), dtype=np.float32)
            logits = (rng.standard_normal((steps * steps * g * g, CLASSES)) - 5).astype(np.float32)
            d_logits = DeviceBuffer(logits.nbytes)
            d_logits.upload(logits, engine)
            post.reset()
            image.upload(frame, engine.handle)
            row_bytes = CLASSES * 4
            for first in range(0, steps * steps, chunk):
                count = min(chunk, steps * steps - first)
                image.tile(steps, first, count, d_input.ptr, engine.handle)
                src = d_logits.ptr + first * g * g * row_bytes
                copy_device(src, post.logits_address(first), count * g * g * row_bytes, engine)
                post.mark_written(first, count)
            post.wait_for(engine.handle)
            maps = post.finish([str(c) for c in range(CLASSES)])
            last = download(d_input, (count * g * g, 1, P, P), np.float32, engine)
            first = steps * steps - count
            check(np.array_equal(last, tile_shifts(frame, shift_pairs(steps, P)[first:], P)), "device tiling")
            want_raw, _ = smooth_maps(logits.astype(np.float64), steps, n, P)
            check(
                np.abs(maps.raw - want_raw).max() <= 1e-5 * np.abs(want_raw).max(),
                f"device path round {round_}",
            )
            d_logits.free()
    finally:
        d_input.free()
        post.close()
        image.close()
        engine.close()


def main() -> int:
    kernels = load_kernels()
    stream = Stream()
    keep: list[DeviceBuffer] = []
    try:
        tiles(kernels, stream, keep)
        postprocess(kernels, stream, keep)
        overlays(kernels, stream, keep)
    finally:
        stream.synchronize()
        for buf in keep:
            buf.free()
        stream.close()
    device_path(str(kernels.path))
    print("sanitize_kernels: tile, postprocess, overlay and the device path ran and matched their oracles")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
