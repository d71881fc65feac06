#!/usr/bin/env python3
"""Progressive maps vs one direct predict: time to the first (S=1) map and to the final map.

    python tools/bench_progressive.py                        # full-size random model, S = 8, 3 runs
    python tools/bench_progressive.py --model m.onnx --steps 16 --runs 5
    python tools/bench_progressive.py --variant tiny --runs 1  # quick smoke run

The full-size model is MedicalPatchNet with seeded random weights, BatchNorm calibrated
(``cxr_edge.model.batchnorm.calibrated_random_model``), exported by ``cxr_edge.export`` (speed
does not depend on the weights). One process, one ``CxrEdge`` (ONNX Runtime on the CPU): one
warm-up ``predict`` at S=1, then per run a direct ``predict(image, steps=S)`` and a
``predict_progressive(image, steps=S)`` whose yields are timed level by level (wall clock from
the call, including decode and preprocess, as the direct call's total is). The order of the two
alternates between runs so drift on a shared machine hits both. Reported: medians over runs,
and ratios against the direct predict measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def build_model(variant: str, seed: int, workdir: Path) -> Path:
    """Export (once per workdir) a BN-calibrated random model of ``variant``; path to its ONNX."""
    path = workdir / f"random-{variant}-seed{seed}.onnx"
    if path.is_file():
        return path
    from cxr_edge.export import export_onnx
    from cxr_edge.metadata import ModelMetadata
    from cxr_edge.model.batchnorm import calibrated_random_model
    from cxr_edge.model.patchnet import variant_named

    model = calibrated_random_model(variant_named(variant), seed=seed)
    export_onnx(model, path, ModelMetadata(checkpoint_sha256="0" * 64), parity=False)
    return path


def measure(model: Path, image: Path, steps: int, runs: int, threads: int | None) -> dict[str, Any]:
    from cxr_edge.pipeline import CxrEdge

    edge = CxrEdge.load(model, threads=threads)
    edge.predict(image, steps=1)  # warm-up: session arenas, page-ins
    direct_s: list[float] = []
    levels_s: dict[int, list[float]] = {}
    direct_s1: list[float] = []
    for run in range(runs):
        order = ("direct", "progressive") if run % 2 == 0 else ("progressive", "direct")
        for what in order:
            t0 = time.perf_counter()
            if what == "direct":
                edge.predict(image, steps=steps)
                direct_s.append(time.perf_counter() - t0)
            else:
                for pred in edge.predict_progressive(image, steps=steps):
                    levels_s.setdefault(pred.steps, []).append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        edge.predict(image, steps=1)
        direct_s1.append(time.perf_counter() - t0)
    direct = statistics.median(direct_s)
    levels = {s: statistics.median(v) for s, v in sorted(levels_s.items())}
    return {
        "model": str(model),
        "image": str(image),
        "steps": steps,
        "runs": runs,
        "direct_s": direct,
        "direct_s1_s": statistics.median(direct_s1),
        "progressive_level_s": levels,
        "first_map_s": levels[1],
        "final_map_s": levels[steps],
        "first_over_direct": levels[1] / direct,
        "final_over_direct": levels[steps] / direct,
        "samples": {"direct_s": direct_s, "progressive_level_s": levels_s, "direct_s1_s": direct_s1},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, help="ONNX model (default: a random full-size model, built here)"
    )
    parser.add_argument("--variant", default="full", help="variant of the random model (full, tiny, ...)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image", type=Path, help="X-ray file (default: the bundled sample)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", type=Path, help="keep the built model here and reuse it next time")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)

    from cxr_edge.assets import sample_image_path

    image = args.image or sample_image_path()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        model = args.model or build_model(args.variant, args.seed, workdir)
        result = measure(model, image, args.steps, args.runs, args.threads)
    print(f"model {result['model']}, image {result['image']}, S = {args.steps}, medians of {args.runs}")
    rows = [
        (f"direct predict(S={args.steps})", result["direct_s"]),
        ("direct predict(S=1)", result["direct_s1_s"]),
    ]
    rows += [(f"progressive: level S={s} ready", t) for s, t in result["progressive_level_s"].items()]
    for name, t in rows:
        print(f"{name:32s} {t:8.3f} s  ({t / result['direct_s']:.3f} x direct S={args.steps})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
