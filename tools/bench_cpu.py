#!/usr/bin/env python3
"""CPU benchmark: cxr-edge's pipeline stage by stage, against the PyTorch eager reference pipeline.

    python tools/bench_cpu.py                       # full-size random model (BN-calibrated), S = 1, 4, 8
    python tools/bench_cpu.py --weights ckpt.pt     # real weights (ONNX exported here)
    python tools/bench_cpu.py --model m.onnx        # ONNX only: no PyTorch comparison
    python tools/bench_cpu.py --variant tiny --runs 1 --steps 1,2   # quick smoke run

Every configuration runs in its own subprocess, so each peak RSS (``ru_maxrss``) belongs to
that configuration alone; the product's workers never import torch. Per S: one warm-up call,
then ``--runs`` timed calls; the table holds per-stage medians (ms). ``render`` = overlay
(blend + legend) and PNG encoding of the 3 findings the CLI reports by default.

The PyTorch eager reference runs the public MedicalPatchNet code path in fp32: centre crop,
/255, ``interpolate(antialias=True)``, shifted copies 4 images per forward (256 patches),
``unfold`` into patches, then per shifted copy ``repeat_interleave`` the patch logits to pixels,
shift back, accumulate, divide, plus the separate unshifted forward for the image logits. It
builds the raw and the scaled map from one backbone pass (the public code runs one pass per
map type), which is in the reference's favour. Ratio = reference total / cxr-edge total, both
from the decoded 8-bit image to the maps (decode excluded, render excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("decode", "preprocess", "tile", "backend", "postprocess", "render")
RENDERED_FINDINGS = 3


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    VmHWM (this process image's high-water mark) rather than ``ru_maxrss``: Linux carries
    ru_maxrss over fork + exec, so a worker would report its parent's peak (torch and all).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- workers (run in their own process) --------------------------------------------------------


def product_worker(model: Path, image: Path, steps: int, runs: int, threads: int | None) -> dict[str, Any]:
    """cxr-edge on ONNX Runtime: per-stage medians (ms) over ``runs`` calls after one warm-up."""
    from cxr_edge.pipeline import CxrEdge
    from cxr_edge.render import encode_png

    edge = CxrEdge.load(model, threads=threads)
    edge.predict(image, steps=1)  # warm-up: session arenas, page-ins
    samples: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "total")}
    for _ in range(runs):
        pred = edge.predict(image, steps=steps)
        t0 = time.perf_counter()
        ranked = sorted(pred.findings, key=lambda f: -f.probability)[:RENDERED_FINDINGS]
        for f in ranked:
            encode_png(pred.overlay(f.label))
        render_ms = (time.perf_counter() - t0) * 1e3
        for stage, ms in pred.timings_ms.items():
            samples[stage].append(ms)
        samples["render"].append(render_ms)
        samples["total"].append(sum(pred.timings_ms.values()) + render_ms)
    medians = {stage: statistics.median(v) for stage, v in samples.items()}
    patches = steps * steps * edge.metadata.patches_per_image
    return {
        "kind": "cxr-edge",
        "steps": steps,
        "patches": patches,
        "median_ms": medians,
        "peak_rss_mb": peak_rss_mb(),
    }


def eager_reference_maps(model: Any, gray: np.ndarray, steps: int, image_size: int, patch: int) -> Any:
    """The public code path in PyTorch eager fp32 (see the module docstring): (logits, raw, scaled)."""
    import torch
    import torch.nn.functional as F

    half, grid = patch // 2, image_size // patch
    h, w = gray.shape
    side = min(h, w)
    crop = gray[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    x = torch.from_numpy(np.ascontiguousarray(crop)).float().div(255.0)[None, None]
    image = F.interpolate(
        x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
    )[0]
    offsets = sorted(((round(patch * k / steps) + half) % patch) - half for k in range(steps))
    pairs = [(dr, dc) for dr in offsets for dc in offsets]
    padded = F.pad(image, (half, half, half, half))

    def patch_logits(images: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, G*G, C)
        p = images.unfold(2, patch, patch).unfold(3, patch, patch).permute(0, 2, 3, 1, 4, 5)
        return model(p.reshape(-1, 1, patch, patch)).reshape(len(images), grid * grid, -1)

    with torch.no_grad():
        image_logits = patch_logits(image[None]).mean(dim=1)[0]  # the separate unshifted forward
        raw = scaled = None
        for first in range(0, len(pairs), 4):  # 4 shifted images per forward, as the public code
            chunk = pairs[first : first + 4]
            shifted = torch.stack(
                [
                    padded[:, dr + half : dr + half + image_size, dc + half : dc + half + image_size]
                    for dr, dc in chunk
                ]
            )
            logits = patch_logits(shifted)
            probs = torch.sigmoid(logits.mean(dim=1))
            for i, (dr, dc) in enumerate(chunk):
                m = logits[i].T.reshape(-1, grid, grid)
                m = torch.repeat_interleave(torch.repeat_interleave(m, patch, dim=1), patch, dim=2)
                back = F.pad(m, (half, half, half, half))[
                    :, half - dr : half - dr + image_size, half - dc : half - dc + image_size
                ]
                raw = back.clone() if raw is None else raw + back
                s = back * probs[i][:, None, None]
                scaled = s if scaled is None else scaled + s
        return image_logits, raw / len(pairs), scaled / len(pairs)


def eager_worker(weights: Path, image: Path, steps: int, runs: int, threads: int | None) -> dict[str, Any]:
    import torch

    from cxr_edge.io import load_xray
    from cxr_edge.model.checkpoint import read_checkpoint

    torch.set_num_threads(threads or os.cpu_count() or 1)
    ckpt = read_checkpoint(weights)
    md = ckpt.metadata
    gray = load_xray(image).pixels
    eager_reference_maps(ckpt.model, gray, 1, md.image_size, md.patch_size)  # warm-up
    totals = []
    for _ in range(runs):
        t0 = time.perf_counter()
        eager_reference_maps(ckpt.model, gray, steps, md.image_size, md.patch_size)
        totals.append((time.perf_counter() - t0) * 1e3)
    patches = (steps * steps + 1) * md.patches_per_image
    return {
        "kind": "pytorch-eager",
        "steps": steps,
        "patches": patches,
        "median_ms": {"total": statistics.median(totals)},
        "peak_rss_mb": peak_rss_mb(),
    }


def run_worker(args: list[str]) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {' '.join(args)} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- preparation -------------------------------------------------------------------------------


def prepare_model(args: argparse.Namespace, workdir: Path) -> tuple[Path, Path | None, str]:
    """(onnx path, torch checkpoint path or None, description)."""
    if args.model is not None:
        return args.model, args.weights, f"{args.model.name} (given)"
    from cxr_edge.digest import sha256_file
    from cxr_edge.export import export_onnx
    from cxr_edge.metadata import ModelMetadata
    from cxr_edge.model.checkpoint import read_checkpoint, save_checkpoint

    if args.weights is not None:
        ckpt = read_checkpoint(args.weights)
        onnx_path = workdir / f"{args.weights.stem}.onnx"
        if not onnx_path.is_file():
            export_onnx(
                ckpt.model, onnx_path, ckpt.metadata.with_(checkpoint_sha256=ckpt.sha256), parity=False
            )
        return onnx_path, args.weights, f"{args.weights.name} ({ckpt.metadata.variant.name})"

    weights = workdir / f"random-{args.variant}-seed{args.seed}.pt"
    onnx_path = weights.with_suffix(".onnx")
    if not weights.is_file() or not onnx_path.is_file():
        import torch

        from cxr_edge.model.batchnorm import calibrate_batchnorm
        from cxr_edge.model.patchnet import MedicalPatchNet, variant_named
        from cxr_edge.model.sample_patches import image_like_patches

        torch.manual_seed(args.seed)
        model = MedicalPatchNet(variant_named(args.variant), num_classes=14)
        calibrate_batchnorm(model, image_like_patches(64, seed=args.seed), head_std=2.0)
        save_checkpoint(model, weights)
        export_onnx(model, onnx_path, ModelMetadata(checkpoint_sha256=sha256_file(weights)), parity=False)
    return onnx_path, weights, f"random {args.variant} (BN-calibrated, seed {args.seed})"


def prepare_image(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    if args.image is not None:
        return args.image, args.image.name
    from cxr_edge.assets import ASSETS_DIR, SAMPLE_IMAGE_NAME

    if (ASSETS_DIR / SAMPLE_IMAGE_NAME).is_file():
        return ASSETS_DIR / SAMPLE_IMAGE_NAME, "bundled sample_chest.png"
    import cv2

    from cxr_edge.model.sample_patches import synthetic_chest

    path = workdir / "synthetic_chest_1024.png"
    if not path.is_file():
        cv2.imwrite(str(path), np.rint(synthetic_chest(1024, seed=1) * 255).astype(np.uint8))
    return path, "synthetic chest 1024x1024 PNG"


# --- report ------------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    lines = [
        (
            f"cxr-edge CPU benchmark: model {result['model']}, image {result['image']}, "
            f"{result['runs']} run(s), threads {result['threads'] or 'default'}, {result['cpus']} CPUs"
        ),
        "",
        "| S | patches | "
        + " | ".join(STAGES)
        + " | total | tile+post % | peak RSS MB | PyTorch eager ms | speed-up |",
        "|---:|---:|" + "---:|" * len(STAGES) + "---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        med = row["median_ms"]
        core = sum(med[s] for s in STAGES if s not in ("render",))
        share = 100.0 * (med["tile"] + med["postprocess"]) / med["total"]
        eager = row.get("eager")
        eager_ms = f"{eager['median_ms']['total']:.0f}" if eager else "-"
        ratio = f"{eager['median_ms']['total'] / (core - med['decode']):.2f}x" if eager else "-"
        cells = " | ".join(f"{med[s]:.1f}" for s in STAGES)
        lines.append(
            f"| {row['steps']} | {row['patches']} | {cells} | {med['total']:.0f} | {share:.2f} | "
            f"{row['peak_rss_mb']:.0f} | {eager_ms} | {ratio} |"
        )
    lines += [
        "",
        (
            "Stage medians in ms. total = all six stages. speed-up = PyTorch eager (preprocess + shifts + "
            "maps) / cxr-edge (preprocess + tile + backend + postprocess), same image, same run."
        ),
    ]
    for row in result["rows"]:
        if row.get("eager"):
            lines.append(f"PyTorch eager peak RSS at S={row['steps']}: {row['eager']['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", type=Path, help="ONNX model to time (no PyTorch comparison without --weights)"
    )
    parser.add_argument("--weights", type=Path, help="PyTorch checkpoint (official or cxr-edge format)")
    parser.add_argument(
        "--variant", default="full", help="random model variant when no weights: full, small, tiny"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--image", type=Path, help="X-ray file (default: bundled sample, else a synthetic chest)"
    )
    parser.add_argument("--steps", default="1,4,8", help="comma-separated S values")
    parser.add_argument(
        "--eager-steps", default="4", help="S values also run through PyTorch eager ('' for none)"
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs per configuration (median reported)")
    parser.add_argument("--threads", type=int, help="CPU threads for ONNX Runtime and PyTorch (default: all)")
    parser.add_argument("--workdir", type=Path, help="keep the built model here and reuse it next time")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the markdown table")
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        kind, model, image, steps, runs, threads = args.worker
        fn = product_worker if kind == "product" else eager_worker
        out = fn(Path(model), Path(image), int(steps), int(runs), int(threads) if threads != "-" else None)
        print(json.dumps(out))
        return 0

    steps_list = [int(s) for s in args.steps.split(",") if s]
    eager_steps = {int(s) for s in args.eager_steps.split(",") if s}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        onnx_path, weights, model_desc = prepare_model(args, workdir)
        image, image_desc = prepare_image(args, workdir)
        prep_s = time.perf_counter() - t0
        threads = str(args.threads) if args.threads else "-"
        rows = []
        for steps in steps_list:
            row = run_worker(["product", str(onnx_path), str(image), str(steps), str(args.runs), threads])
            if weights is not None and steps in eager_steps:
                row["eager"] = run_worker(
                    ["eager", str(weights), str(image), str(steps), str(args.runs), threads]
                )
            rows.append(row)
            print(f"S={steps} done", file=sys.stderr)
    result = {
        "model": model_desc,
        "image": image_desc,
        "runs": args.runs,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "prepare_s": round(prep_s, 1),
        "rows": rows,
    }
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
