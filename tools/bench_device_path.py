#!/usr/bin/env python3
"""Per-stage timings of the device path on one GPU, and host tiling + copy against GPU tiling.

    python3 tools/bench_device_path.py [--steps 8 64] [--repeats 3] [--json out.json]

The device path as the pipeline runs it, without TensorRT: a tiny MedicalPatchNet (random,
BatchNorm-calibrated weights) on PyTorch CUDA (tools/torch_device_backend.py), the CUDA tile
kernel (cxr_edge.cuda.tiling), the fused postprocess and the overlay kernel (cxr_edge.cuda).
Stages are timed one at a time with CUDA events on the stream they run on (medians of
``--repeats`` runs); "finish" and "predict" are host wall times (finish: postprocess + download
+ the image's one sync; predict: CxrEdge.predict from the decoded image, decode excluded).
The comparison at the largest S: the host tiles every chunk (numpy) and copies it to the
engine's input (pageable, as the TensorRT backend used to, and pinned), against one upload of
the image and the tile kernel writing each chunk into the input buffer. Needs torch with CUDA,
cuda-python and libcxr_edge_cuda.so ($CXR_EDGE_CUDA_LIB or build/).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def gpu_ms(fn: Callable[[], object], stream: int, repeats: int) -> float:
    """Median milliseconds between CUDA events recorded on ``stream`` around ``fn()``."""
    import torch

    ext = torch.cuda.ExternalStream(stream)  # type: ignore[no-untyped-call]
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start.record(ext)
        fn()
        end.record(ext)
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(statistics.median(times))


def wall_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def stage_row(
    parts: dict[str, Any], model_input: np.ndarray, gray: np.ndarray, crop: Any, steps: int, repeats: int
) -> dict[str, Any]:
    from cxr_edge.cuda.postprocess import GpuPostprocess

    backend, image, library, md = parts["backend"], parts["image"], parts["library"], parts["metadata"]
    per_shift = md.patches_per_image
    shifts_per_chunk = backend.chunk_patches // per_shift
    total = steps * steps
    chunks = [(first, min(shifts_per_chunk, total - first)) for first in range(0, total, shifts_per_chunk)]
    engine = backend.stream_handle
    post = GpuPostprocess(steps, md.image_size, md.patch_size, md.num_classes, library=library)
    try:
        upload = gpu_ms(lambda: image.upload(model_input, engine), engine, repeats)

        def tile_all() -> None:
            for first, count in chunks:
                image.tile(steps, first, count, backend.input_address(), engine)

        def engine_all() -> None:
            for first, count in chunks:
                backend.run_device_input(count * per_shift, post.logits_address(first))

        tile = gpu_ms(tile_all, engine, repeats)
        model = gpu_ms(engine_all, engine, repeats)
        post.mark_all_written()
        post.wait_for(engine)
        post_ms = gpu_ms(post.run, post.stream.handle, repeats)
        finish = wall_ms(lambda: post.finish(md.labels), repeats)
        vmax = [1.0, 2.0, 3.0]
        overlay = wall_ms(lambda: post.overlay(gray, crop, [0, 1, 2], vmax), repeats)
    finally:
        post.close()
    return {
        "steps": steps,
        "patches": total * per_shift,
        "chunks": len(chunks),
        "upload_ms": upload,
        "tile_gpu_ms": tile,
        "engine_ms": model,
        "postprocess_ms": post_ms,
        "finish_ms": finish,
        "overlay3_ms": overlay,
    }


def host_vs_gpu_tiling(
    parts: dict[str, Any], model_input: np.ndarray, steps: int, repeats: int
) -> dict[str, Any]:
    from cxr_edge.gpu import DeviceBuffer, PinnedBuffer, Stream
    from cxr_edge.tile import iter_patch_batches

    backend, image, md = parts["backend"], parts["image"], parts["metadata"]
    engine = Stream(backend.stream_handle)
    chunk = backend.chunk_patches
    target = DeviceBuffer(chunk * md.patch_size**2 * 4)
    pinned = PinnedBuffer(target.nbytes)
    try:

        def host_pageable() -> None:
            for batch in iter_patch_batches(model_input, steps, md.patch_size, chunk):
                target.upload(batch.patches, engine)  # pageable: the driver stages it
            engine.synchronize()

        def host_pinned() -> None:
            for batch in iter_patch_batches(model_input, steps, md.patch_size, chunk):
                engine.synchronize()  # the staging buffer's previous copy is done
                staged = pinned.array(np.float32, batch.patches.shape)
                np.copyto(staged, batch.patches)
                pinned.upload_to(target.ptr, batch.patches.nbytes, engine)
            engine.synchronize()

        per_shift = md.patches_per_image
        shifts = chunk // per_shift

        def gpu() -> None:
            image.upload(model_input, engine.handle)
            for first in range(0, steps * steps, shifts):
                image.tile(steps, first, min(shifts, steps * steps - first), target.ptr, engine.handle)
            engine.synchronize()

        row = {
            "steps": steps,
            "host_tile_pageable_copy_ms": wall_ms(host_pageable, repeats),
            "host_tile_pinned_copy_ms": wall_ms(host_pinned, repeats),
            "gpu_upload_tile_ms": wall_ms(gpu, repeats),
        }
    finally:
        engine.synchronize()
        target.free()
        pinned.free()
    row["speedup_vs_pageable"] = row["host_tile_pageable_copy_ms"] / row["gpu_upload_tile_ms"]
    row["speedup_vs_pinned"] = row["host_tile_pinned_copy_ms"] / row["gpu_upload_tile_ms"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=2048, help="patches per engine call")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("bench_device_path: no CUDA device visible to PyTorch", file=sys.stderr)
        return 2
    from torch_device_backend import TorchDeviceBackend  # tools/, on sys.path when run as a script

    from cxr_edge.assets import sample_image_path
    from cxr_edge.cuda.kernels import load_kernels
    from cxr_edge.cuda.postprocess import GpuPostprocess
    from cxr_edge.cuda.tiling import CudaDeviceImage
    from cxr_edge.metadata import ModelMetadata
    from cxr_edge.model.batchnorm import calibrated_random_model
    from cxr_edge.model.patchnet import VARIANTS
    from cxr_edge.pipeline import CxrEdge, prepare_image

    library = str(load_kernels().path)
    metadata = ModelMetadata()
    model = calibrated_random_model(VARIANTS["tiny"], num_classes=metadata.num_classes, seed=12)
    backend = TorchDeviceBackend(model, metadata, args.chunk)
    image = CudaDeviceImage(metadata.image_size, metadata.patch_size, library)
    parts = {"backend": backend, "image": image, "library": library, "metadata": metadata}
    prepared = prepare_image(sample_image_path(), metadata)
    print(
        f"device: {torch.cuda.get_device_name()}; model: tiny MedicalPatchNet (random, BN-calibrated), "
        f"torch {torch.__version__} fp32 (no TF32); {args.chunk} patches per engine call; medians of {args.repeats}"
    )

    rows = []
    edge = CxrEdge(
        backend,
        accumulator=functools.partial(GpuPostprocess, library=library),
        device_image=functools.partial(CudaDeviceImage, library=library),
    )
    header = (
        "| S | patches | chunks | upload ms | tile (GPU) ms | engine ms | postprocess ms | "
        "finish ms | 3 overlays ms | predict ms |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for steps in args.steps:
        row = stage_row(parts, prepared.model_input, prepared.gray, prepared.crop, steps, args.repeats)
        edge.predict(prepared.gray, steps=steps)  # warm: the S's postprocess is made here
        row["predict_ms"] = wall_ms(functools.partial(edge.predict, prepared.gray, steps=steps), args.repeats)
        rows.append(row)
        print(
            f"| {steps} | {row['patches']} | {row['chunks']} | {row['upload_ms']:.3f} | {row['tile_gpu_ms']:.3f} | "
            f"{row['engine_ms']:.1f} | {row['postprocess_ms']:.3f} | {row['finish_ms']:.2f} | "
            f"{row['overlay3_ms']:.2f} | {row['predict_ms']:.1f} |"
        )

    steps = max(args.steps)
    tiling = host_vs_gpu_tiling(parts, prepared.model_input, steps, max(1, min(args.repeats, 2)))
    print()
    print(
        f"tiling + copy into the engine input at S={steps} ({steps * steps * metadata.patches_per_image} patches):"
    )
    print(
        "| host tile + pageable copy ms | host tile + pinned copy ms | GPU upload + tile ms | x vs pageable | x vs pinned |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| {tiling['host_tile_pageable_copy_ms']:.1f} | {tiling['host_tile_pinned_copy_ms']:.1f} | "
        f"{tiling['gpu_upload_tile_ms']:.2f} | {tiling['speedup_vs_pageable']:.0f} | {tiling['speedup_vs_pinned']:.0f} |"
    )
    edge.close()
    image.close()
    if args.json:
        args.json.write_text(
            json.dumps({"device": torch.cuda.get_device_name(), "rows": rows, "tiling": tiling}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
