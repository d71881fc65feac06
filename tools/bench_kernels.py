#!/usr/bin/env python3
"""Microbenchmark of the CUDA kernels beside the reference PyTorch step, on one GPU.

    python tools/bench_kernels.py [--steps 1 4 8 16 64] [--classes 14] [--json out.json]

Needs a CUDA build of PyTorch (device memory, events, the reference) and libcxr_edge_cuda.so
(tools/build_cuda.sh). Times are medians of CUDA-event timings. The reference is the public
code's shift-averaging step: per shift, repeat_interleave the (G, G) patch logits to (N, N),
shift back through a zero-padded window, accumulate raw and scaled maps, divide by S*S.
Bandwidth: the minimum bytes a kernel must move (its inputs read once, outputs written once)
over its time, against the device-to-device copy bandwidth measured here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

N, P = 512, 64
G = N // P


def cuda_time_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median milliseconds of ``fn()`` on the current stream (CUDA events)."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(statistics.median(times))


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy bandwidth (GB/s, read + write counted) on 1 GiB."""
    import torch

    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), repeats=10)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def reference_step(logits: Any, pairs: list[list[int]], steps: int) -> tuple[Any, Any]:
    """The public code's postprocess on the GPU: (raw, scaled) (C, N, N) float32."""
    import torch
    import torch.nn.functional as F

    k_count, classes = steps * steps, logits.shape[1]
    per = logits.view(k_count, G, G, classes)
    weights = torch.sigmoid(per.mean(dim=(1, 2)))  # (K, C)
    raw = torch.zeros(classes, N, N, device=logits.device)
    scaled = torch.zeros_like(raw)
    half = P // 2
    for k, (dr, dc) in enumerate(pairs):
        m = per[k].permute(2, 0, 1).repeat_interleave(P, dim=1).repeat_interleave(P, dim=2)  # (C, N, N)
        padded = F.pad(m, (half, half, half, half))
        back = padded[:, half - dr : half - dr + N, half - dc : half - dc + N]  # back[y] = m[y - dr]
        raw += back
        scaled += back * weights[k][:, None, None]
    return raw / k_count, scaled / k_count


def bench_steps(
    kernels: Any, image: Any, steps: int, classes: int, repeats: int, copy_gbs: float, stream: int, gen: Any
) -> dict[str, Any]:
    """Tile (float16 out), fused postprocess and the reference step at one S: one table row."""
    import torch

    from cxr_edge.cuda.kernels import PostprocessBuffers, PostprocessParams, tile_params
    from cxr_edge.tile import shift_pairs

    k_count = steps * steps
    patches = k_count * G * G
    pairs = shift_pairs(steps, P).tolist()

    tile_out = torch.empty(patches, 1, P, P, dtype=torch.float16, device="cuda")
    tp = tile_params(N, P, steps, 0, k_count, np.float16)
    tile_ms = cuda_time_ms(lambda: kernels.tile(tp, image.data_ptr(), tile_out.data_ptr(), stream), repeats)
    tile_bytes = N * N * 4 + tile_out.numel() * 2

    logits = 2 * torch.randn(patches, classes, device="cuda", generator=gen)
    params = PostprocessParams(N, P, steps, classes, 0)
    shift_logits = torch.empty(k_count, classes, device="cuda")
    image_logits = torch.empty(classes, device="cuda")
    probabilities = torch.empty(classes, device="cuda")
    maps = torch.empty(2, classes, N, N, device="cuda")
    workspace = torch.empty(kernels.workspace_bytes(params, True, True) // 4, device="cuda")
    buffers = PostprocessBuffers(
        logits.data_ptr(),
        shift_logits.data_ptr(),
        image_logits.data_ptr(),
        probabilities.data_ptr(),
        maps[0].data_ptr(),
        maps[1].data_ptr(),
        workspace.data_ptr(),
    )
    post_ms = cuda_time_ms(lambda: kernels.postprocess(params, buffers, stream), repeats)
    post_bytes = logits.numel() * 4 + maps.numel() * 4 + (k_count + 2) * classes * 4

    ref_ms = cuda_time_ms(
        lambda: reference_step(logits, pairs, steps), repeats if steps <= 8 else 3, warmup=1
    )
    ref_raw, ref_scaled = reference_step(logits, pairs, steps)
    max_abs = max(float((maps[0] - ref_raw).abs().max()), float((maps[1] - ref_scaled).abs().max()))
    post_gbs = post_bytes / (post_ms * 1e-3) / 1e9
    return {
        "steps": steps,
        "patches": patches,
        "tile_fp16_ms": tile_ms,
        "tile_gbs": tile_bytes / (tile_ms * 1e-3) / 1e9,
        "postprocess_ms": post_ms,
        "postprocess_gbs": post_gbs,
        "postprocess_x_roofline": copy_gbs / post_gbs,
        "reference_ms": ref_ms,
        "speedup": ref_ms / post_ms,
        "max_abs_vs_reference": max_abs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4, 8, 16, 64])
    parser.add_argument("--classes", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument(
        "--library", default=None, help="path of libcxr_edge_cuda.so (default: the binding's search)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA device visible to PyTorch", file=sys.stderr)
        return 2
    from cxr_edge.cuda.kernels import load_kernels, overlay_params
    from cxr_edge.preprocess import CropBox

    kernels = load_kernels(args.library)
    stream = torch.cuda.current_stream().cuda_stream
    copy_gbs = copy_bandwidth_gbs()
    device = torch.cuda.get_device_name()
    print(
        f"device: {device}; measured copy bandwidth {copy_gbs:.0f} GB/s; C = {args.classes}; library {kernels.path}"
    )
    header = "| S | patches | tile fp16 ms | tile GB/s | post ms | post GB/s | roofline x | reference ms | speed-up | max abs |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    rows = []
    classes = args.classes
    gen = torch.Generator(device="cuda").manual_seed(0)
    image = torch.rand(N, N, device="cuda", generator=gen)
    for steps in args.steps:
        repeats = args.repeats if steps <= 16 else max(5, args.repeats // 5)
        row = bench_steps(kernels, image, steps, args.classes, repeats, copy_gbs, stream, gen)
        rows.append(row)
        print(
            f"| {steps} | {row['patches']} | {row['tile_fp16_ms']:.4f} | {row['tile_gbs']:.0f} | "
            f"{row['postprocess_ms']:.4f} | {row['postprocess_gbs']:.0f} | {row['postprocess_x_roofline']:.2f} | "
            f"{row['reference_ms']:.3f} | {row['speedup']:.0f}x | {row['max_abs_vs_reference']:.2e} |"
        )
        torch.cuda.empty_cache()

    # Overlay: 3 findings over a 2048 x 2500 display image.
    h, w = 2048, 2500
    gray = torch.randint(0, 256, (h, w), dtype=torch.uint8, device="cuda")
    maps = torch.randn(classes, N, N, device="cuda")
    out = torch.empty(3, h, w, 3, dtype=torch.uint8, device="cuda")
    op = overlay_params(N, (h, w), CropBox(0, (w - h) // 2, h), [0, 1, 2], [1.0, 1.0, 1.0])
    ov_ms = cuda_time_ms(
        lambda: kernels.overlay(op, gray.data_ptr(), maps.data_ptr(), out.data_ptr(), None, stream),
        args.repeats,
    )
    print(
        f"overlay: 3 x {h}x{w} RGB in {ov_ms:.4f} ms ({(gray.numel() * 3 + out.numel()) / (ov_ms * 1e-3) / 1e9:.0f} GB/s)"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"device": device, "copy_gbs": copy_gbs, "rows": rows, "overlay_ms": ov_ms}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
