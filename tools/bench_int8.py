#!/usr/bin/env python3
"""CPU benchmark: INT8 recipes against float32 on ONNX Runtime, one patch batch, same run.

    python tools/bench_int8.py --onnx full.onnx --calib calibration/nih14-dev.txt
    python tools/bench_int8.py --onnx full.onnx --calib DIR --recipes cpu:stem,se,head cpu:none cpu-int8:none

Each recipe is ``target[-int8]:keep_float`` (``cpu`` = uint8 activations, ``cpu-int8`` = int8
activations, ``tensorrt`` = the TensorRT placement; keep_float ``none`` or groups). Every model
runs the same batch (``--patches``, whole S=2 shifted copies of the first calibration image), one
warm-up each, then ``--runs`` rounds in which every model runs once (interleaved, so load on a
shared CPU hits all alike); the table holds per-model medians and the float32/INT8 ratio of
medians. Calibration uses ``--patches-per-image`` patches per image (ranges, not speed, depend on it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--onnx", type=Path, required=True, help="float32 ONNX from 'cxr-edge export'")
    parser.add_argument("--calib", type=Path, required=True, help="calibration folder or list file")
    parser.add_argument("--recipes", nargs="+", default=["cpu:stem,se,head", "cpu:none", "cpu-int8:none"])
    parser.add_argument("--patches", type=int, default=256, help="patches per timed call (multiple of 64)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--patches-per-image", type=int, default=32)
    parser.add_argument("--max-images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    import numpy as np

    from cxr_edge.backends.onnxruntime import OnnxRuntimeBackend
    from cxr_edge.calibration import SamplingSettings, load_calibration_set
    from cxr_edge.metadata import ModelMetadata
    from cxr_edge.pipeline import prepare_image
    from cxr_edge.quantize import cache_path
    from cxr_edge.quantize.int8 import Int8Options, quantize_int8
    from cxr_edge.tile import shift_pairs, tile_shifts

    meta = ModelMetadata.from_onnx(args.onnx)
    calib = load_calibration_set(
        args.calib,
        meta,
        SamplingSettings(patches_per_image=args.patches_per_image),
        max_images=args.max_images,
    )
    image = prepare_image(calib.images[0].path, meta).model_input
    copies = -(-args.patches // meta.patches_per_image)
    pairs = shift_pairs(max(2, int(np.ceil(np.sqrt(copies)))), meta.patch_size)[:copies]
    batch = tile_shifts(image, pairs, meta.patch_size)[: args.patches]

    models: dict[str, OnnxRuntimeBackend] = {"fp32": OnnxRuntimeBackend(args.onnx, threads=args.threads)}
    with tempfile.TemporaryDirectory(prefix="bench-int8.") as tmp:
        for recipe in args.recipes:
            target, _, keep = recipe.partition(":")
            groups = tuple(g for g in keep.split(",") if g and g != "none")
            options = Int8Options(
                target="tensorrt" if target == "tensorrt" else "cpu",
                cpu_activations="int8" if target == "cpu-int8" else "uint8",
                keep_float=groups,
            )
            out = Path(tmp) / f"{len(models)}.onnx"
            start = time.perf_counter()
            # one range cache per range kind and method: calibrate once, place many ways
            quantize_int8(
                args.onnx, out, calib, options, cache=cache_path(calib, args.onnx, options, Path(tmp))
            )
            print(f"quantized {recipe} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            models[recipe] = OnnxRuntimeBackend(out, threads=args.threads)
        for backend in models.values():
            backend.run(batch)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.runs):
            for name, backend in models.items():
                start = time.perf_counter()
                backend.run(batch)
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["fp32"])
    print(f"{len(batch)} patches, {args.runs} interleaved runs, medians (ms); ratio = fp32 / model")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"  {name:24s} {median * 1e3:8.1f} ms   {base / median:5.2f}x   runs {[round(v * 1e3) for v in values]}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
