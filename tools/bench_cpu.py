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

The PyTorch eager reference runs the public MedicalPatchNet code path (its map scripts) in fp32:
centre crop, /255, ``interpolate(antialias=True)``; shifted copies from a ``DataLoader``, 4 images
per forward (256 patches), ``unfold`` into patches, forwards with autograd on (the scripts call
``model.eval()`` but never ``torch.no_grad()``), then per shifted copy ``repeat_interleave`` the
patch logits to pixels, shift back, accumulate, divide; plus the separate unshifted forward for
the image logits. The scripts make one map type per run (raw or scaled), so what ``infer``
delivers (logits, raw and scaled maps) takes two runs: that is the compared total. The table
also gives one run alone and one run under ``torch.no_grad()``, so every reading is visible.
Ratios = reference / cxr-edge, both from the decoded 8-bit image to the maps (decode and
render excluded).
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
    from cxr_edge.render import encode_png, finding_overlay

    edge = CxrEdge.load(model, threads=threads)
    edge.predict(image, steps=1)  # warm-up: session arenas, page-ins
    samples: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "total")}
    for _ in range(runs):
        pred = edge.predict(image, steps=steps)
        t0 = time.perf_counter()
        ranked = sorted(pred.findings, key=lambda f: -f.probability)[:RENDERED_FINDINGS]
        for f in ranked:
            encode_png(finding_overlay(pred, f.label))
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


def public_code_preprocess(gray: np.ndarray, image_size: int) -> Any:
    """Centre square crop, /255, antialiased bilinear resize: ``(1, 1, size, size) float32``."""
    import torch
    import torch.nn.functional as F

    h, w = gray.shape
    side = min(h, w)
    crop = gray[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    x = torch.from_numpy(np.ascontiguousarray(crop)).float().div(255.0)[None, None]
    return F.interpolate(
        x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
    )


def public_code_map(model: Any, image: Any, steps: int, patch: int, scaled: bool) -> tuple[Any, Any]:
    """One map type the way the public scripts make it: ``(image logits (C,), map (C, H, W))``.

    ``image``: ``(1, 1, H, W)`` float32. Shifted copies come from a ``Dataset`` through a
    ``DataLoader`` 4 at a time; every forward runs with autograd on and is detached afterwards
    (the scripts set ``model.eval()`` but use no ``torch.no_grad()``); the image logits come
    from a separate forward of the unshifted image.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Dataset

    size, half = image.shape[-1], patch // 2
    grid = size // patch
    offsets = sorted(((round(patch * k / steps) + half) % patch) - half for k in range(steps))
    pairs = [(dr, dc) for dr in offsets for dc in offsets]

    def crop_shifted(x: torch.Tensor, dr: int, dc: int) -> torch.Tensor:  # (..., H, W), zero fill
        padded = F.pad(x, (half, half, half, half))
        return padded[..., half + dr : half + dr + size, half + dc : half + dc + size]

    class ShiftedCopies(Dataset[tuple[torch.Tensor, torch.Tensor]]):
        def __len__(self) -> int:
            return len(pairs)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return crop_shifted(image[0], *pairs[i]), torch.tensor(pairs[i])

    def patch_logits(images: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, G*G, C)
        p = images.unfold(2, patch, patch).unfold(3, patch, patch).permute(0, 2, 3, 1, 4, 5)
        logits: torch.Tensor = model(p.reshape(-1, 1, patch, patch))
        return logits.reshape(len(images), grid * grid, -1)

    features, shifts = [], []
    for batch, batch_shifts in DataLoader(ShiftedCopies(), batch_size=4, shuffle=False):
        logits = patch_logits(batch)
        if scaled:
            logits = logits * torch.sigmoid(logits.mean(dim=1)).unsqueeze(1)
        features.append(logits.detach())
        shifts.append(batch_shifts)
    per_copy = torch.cat(features).reshape(-1, grid, grid, features[0].shape[-1])
    total = torch.zeros((per_copy.shape[-1], size, size), dtype=per_copy.dtype)
    for copy_logits, (dr, dc) in zip(per_copy, torch.cat(shifts).tolist()):
        m = copy_logits.permute(2, 0, 1)
        m = torch.repeat_interleave(torch.repeat_interleave(m, patch, dim=1), patch, dim=2)
        total += crop_shifted(m, -dr, -dc)  # the grid moved the other way relative to the image
    image_logits = patch_logits(image).mean(dim=1)[0].detach()
    return image_logits, total / len(pairs)


def eager_reference_maps(model: Any, gray: np.ndarray, steps: int, image_size: int, patch: int) -> Any:
    """What ``infer`` delivers, made the public code's way: (logits, raw, scaled), one run per map."""
    image = public_code_preprocess(gray, image_size)
    logits, raw = public_code_map(model, image, steps, patch, scaled=False)
    _, scaled = public_code_map(model, image, steps, patch, scaled=True)
    return logits, raw, scaled


def eager_worker(weights: Path, image: Path, steps: int, runs: int, threads: int | None) -> dict[str, Any]:
    """The public code path in PyTorch eager fp32: medians (ms) of one map type (``one_map``),
    raw + scaled (``total``, two runs as the scripts need) and one map under ``torch.no_grad``."""
    import torch

    from cxr_edge.io import load_xray
    from cxr_edge.model.checkpoint import read_checkpoint

    torch.set_num_threads(threads or os.cpu_count() or 1)
    ckpt = read_checkpoint(weights)
    md = ckpt.metadata
    gray = load_xray(image).pixels

    def one_map(scaled: bool) -> float:
        t0 = time.perf_counter()
        public_code_map(ckpt.model, public_code_preprocess(gray, md.image_size), steps, md.patch_size, scaled)
        return (time.perf_counter() - t0) * 1e3

    one_map(False)  # warm-up
    samples: dict[str, list[float]] = {"one_map": [], "total": [], "one_map_no_grad": []}
    for _ in range(runs):
        raw_ms, scaled_ms = one_map(False), one_map(True)
        with torch.no_grad():
            no_grad_ms = one_map(False)
        samples["one_map"].append(raw_ms)
        samples["total"].append(raw_ms + scaled_ms)
        samples["one_map_no_grad"].append(no_grad_ms)
    patches = (steps * steps + 1) * md.patches_per_image
    return {
        "kind": "pytorch-eager",
        "steps": steps,
        "patches_per_map": patches,
        "median_ms": {k: statistics.median(v) for k, v in samples.items()},
        "peak_rss_mb": peak_rss_mb(),
    }


def run_worker(args: list[str]) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {' '.join(args)} failed:\n{done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


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

    from cxr_edge.phantoms import render_phantom

    path = workdir / "phantom_chest_1024.png"
    if not path.is_file():
        cv2.imwrite(str(path), render_phantom(1, size=1024).image)
    return path, "chest phantom 1024x1024 PNG"


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
        + " | total | tile+post % | peak RSS MB | eager raw+scaled ms | speed-up"
        + " | eager one map ms | speed-up | one map no_grad ms | speed-up |",
        "|---:|---:|" + "---:|" * len(STAGES) + "---:|" * 9,
    ]
    for row in result["rows"]:
        med = row["median_ms"]
        core = sum(med[s] for s in STAGES if s not in ("decode", "render"))
        share = 100.0 * (med["tile"] + med["postprocess"]) / med["total"]
        eager_cells = []
        for key in ("total", "one_map", "one_map_no_grad"):
            ms = row["eager"]["median_ms"][key] if row.get("eager") else None
            eager_cells += ["-", "-"] if ms is None else [f"{ms:.0f}", f"{ms / core:.2f}x"]
        cells = " | ".join(f"{med[s]:.1f}" for s in STAGES)
        lines.append(
            f"| {row['steps']} | {row['patches']} | {cells} | {med['total']:.0f} | {share:.2f} | "
            f"{row['peak_rss_mb']:.0f} | " + " | ".join(eager_cells) + " |"
        )
    lines += [
        "",
        (
            "Stage medians in ms. total = all six stages. speed-up = PyTorch eager (preprocess + shifts + "
            "maps, the public code's way) / cxr-edge (preprocess + tile + backend + postprocess), "
            "same image, same run; raw+scaled is what infer delivers."
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
