"""Train the bundled demo model: a reduced MedicalPatchNet on synthetic chest phantoms.

    python tools/train_demo.py --out /tmp/demo_train            # 60 min on 2 CPU cores
    cxr-edge export --weights /tmp/demo_train/demo_model.pt --out cxr_edge/assets/demo_model.onnx

Same code path as the full model (``MedicalPatchNet``, width/depth scaled), trained as
MedicalPatchNet is: each image is cut into its G x G patches, the image logit is the mean of
the patch logits, loss = BCE on the image logit. CPU time is scarce, so two patch-level terms
speed learning up: per step, extra single patches (half centred on planted findings) and a
per-patch BCE on the phantom masks (which patches hold a finding), whose background target is
slightly above 0 so background logits settle near one value instead of drifting (their mean is
the image logit). Augmentation: the runtime's own grid shifts (multiples of 8 px, zero fill)
and a light exposure jitter.
Per-class thresholds: Youden J on a validation split of phantoms, stored in the checkpoint
metadata. Seeds: train 0..N-1, validation 100000.., held-out evaluation from 1000000 on.
Deterministic given the seeds and thread count (reported with the wall time in train_log.json).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

VAL_SEED_START = 100_000
HELD_OUT_SEED_START = 1_000_000  # never used here; `cxr-edge eval --phantoms 200 --seed 1000000`


#: Mask coverage is cached per CELL x CELL pixel cell; training shifts are multiples of CELL
#: (the S = 8 offsets), so per-patch coverage of any training shift is a sum of whole cells.
CELL = 8


def _render(args: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from cxr_edge.phantoms import PHANTOM_LABELS, render_phantom

    seed, size = args
    p = render_phantom(seed, size=size)
    n = size // CELL
    cells = np.stack([p.masks[k].reshape(n, CELL, n, CELL).sum(axis=(1, 3)) for k in PHANTOM_LABELS])
    return p.image, p.label_vector(), cells.astype(np.uint8)


def render_cache(
    path: Path, seeds: range, size: int, workers: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Phantoms ``(N, size, size) uint8``, targets ``(N, C) float32`` and mask pixel counts per
    CELL x CELL cell ``(N, C, size/CELL, size/CELL) uint8``, cached in ``path``."""
    if path.is_file():
        with np.load(path) as z:
            if z["seeds"].tolist() == [seeds.start, seeds.stop] and int(z["size"]) == size:
                return z["images"], z["targets"], z["cells"]
    t0 = time.time()
    with mp.get_context("fork").Pool(workers) as pool:
        out = pool.map(_render, [(s, size) for s in seeds], chunksize=16)
    images, targets, cells = (np.stack([o[i] for o in out]) for i in range(3))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        images=images,
        targets=targets,
        cells=cells,
        seeds=np.array([seeds.start, seeds.stop]),
        size=size,
    )
    print(f"rendered {len(seeds)} phantoms in {time.time() - t0:.0f} s -> {path}", flush=True)
    return images, targets, cells


def patch_targets(cells: np.ndarray, shifts: np.ndarray, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch finding targets and weights for shifted images.

    cells: ``(B, C, n, n)`` mask pixel counts per cell; shifts: ``(B, 2)`` (dr, dc), multiples of
    CELL. Returns ``(B*G*G, C) float32`` targets (1: the patch holds >= 5 % finding pixels or
    >= 25 % of the finding) and weights (0 for patches that touch the finding only marginally).
    """
    b, c, n, _ = cells.shape
    pad = patch_size // 2 // CELL
    per = patch_size // CELL
    g = n // per
    padded = np.pad(cells.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cover = np.empty((b, g * g, c), np.float64)
    for i, (dr, dc) in enumerate(shifts // CELL):
        win = padded[i, :, dr + pad : dr + pad + n, dc + pad : dc + pad + n]
        cover[i] = win.reshape(c, g, per, g, per).sum(axis=(2, 4)).reshape(c, g * g).T
    area = cells.reshape(b, c, -1).sum(-1).astype(np.float64)[:, None, :]
    positive, weight = coverage_targets(cover, area, patch_size)
    return positive.reshape(b * g * g, c), weight.reshape(b * g * g, c)


def coverage_targets(cover: np.ndarray, area: np.ndarray, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Patch targets and weights from finding pixel counts ``cover`` and finding areas ``area``
    (broadcastable, ``(..., C)``): 1 where the patch holds >= 5 % finding pixels or >= 25 % of the
    finding; weight 0 where it touches the finding only marginally."""
    frac_patch = cover / float(patch_size * patch_size)
    frac_finding = np.divide(cover, area, out=np.zeros_like(cover), where=area > 0)
    positive = (frac_patch >= 0.05) | (frac_finding >= 0.25)
    return positive.astype(np.float32), np.where(positive | (cover == 0), 1.0, 0.0).astype(np.float32)


def sample_patches(
    images: np.ndarray,
    cells: np.ndarray,
    targets: np.ndarray,
    n: int,
    patch_size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` single patches for the balanced patch loss: half centred near a planted finding,
    half anywhere; top-left corners on the CELL grid in [-P/2, H - P/2] with zero fill, the same
    positions the runtime's shifted tiles take.

    Returns ``(n, P, P) uint8`` patches, ``(n, C) float32`` targets and weights.
    """
    size = images.shape[-1]
    half, per = patch_size // 2, patch_size // CELL
    out = np.zeros((n, patch_size, patch_size), np.uint8)
    cover = np.zeros((n, cells.shape[1]), np.float64)
    area = np.zeros_like(cover)
    lo, hi = -half // CELL, (size - half) // CELL  # corner range in cells
    for k in range(n):
        i = int(rng.integers(len(images)))
        positives = np.flatnonzero(targets[i] > 0)
        r0 = c0 = None
        if k % 2 == 0 and positives.size:
            cls = int(rng.choice(positives))
            rr, cc = np.nonzero(cells[i, cls])
            if rr.size:
                j = int(rng.integers(rr.size))
                r0 = int(np.clip(rr[j] - rng.integers(0, per), lo, hi))
                c0 = int(np.clip(cc[j] - rng.integers(0, per), lo, hi))
        if r0 is None or c0 is None:
            r0, c0 = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
        rows = slice(max(r0, 0), min(r0 + per, size // CELL))
        cols = slice(max(c0, 0), min(c0 + per, size // CELL))
        cover[k] = cells[i, :, rows, cols].sum(axis=(1, 2), dtype=np.int64)
        area[k] = cells[i].reshape(cells.shape[1], -1).sum(-1)
        y0, x0 = r0 * CELL, c0 * CELL
        ys, xs = slice(max(y0, 0), min(y0 + patch_size, size)), slice(max(x0, 0), min(x0 + patch_size, size))
        out[k, ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = images[i, ys, xs]
    t, w = coverage_targets(cover, area, patch_size)
    return out, t, w


def to_patches(images, patch_size: int):
    """``(B, 1, H, W)`` tensor -> ``(B*G*G, 1, P, P)``, patch index row*G + col within each image."""
    b, _, h, _ = images.shape
    g = h // patch_size
    return (
        images.reshape(b, 1, g, patch_size, g, patch_size)
        .permute(0, 2, 4, 1, 3, 5)
        .reshape(b * g * g, 1, patch_size, patch_size)
    )


def shift_batch(images, shifts: np.ndarray, patch_size: int):
    """Shift each ``(1, H, W)`` image by its (dr, dc): out[u, v] = image[u+dr, v+dc], zero outside
    (as the runtime tiles its shifted copies)."""
    import torch

    half = patch_size // 2
    padded = torch.nn.functional.pad(images, (half, half, half, half))
    h, w = images.shape[-2:]
    out = torch.empty_like(images)
    for i, (dr, dc) in enumerate(shifts):
        out[i] = padded[i, :, dr + half : dr + half + h, dc + half : dc + half + w]
    return out


def image_logits(model, images_u8: np.ndarray, patch_size: int, batch: int = 16, with_max: bool = False):
    """Unshifted image logits ``(N, C)`` (mean of patch logits) of ``(N, H, W) uint8`` images;
    with ``with_max`` also the largest patch logit ``(N, C)`` (a training diagnostic only)."""
    import torch

    model.eval()
    means, maxes = [], []
    with torch.no_grad():
        for i in range(0, len(images_u8), batch):
            x = torch.from_numpy(images_u8[i : i + batch]).float().div_(255.0).unsqueeze(1)
            logits = model(to_patches(x, patch_size)).reshape(x.shape[0], -1, model.num_classes)
            means.append(logits.mean(1).numpy())
            maxes.append(logits.amax(1).numpy())
    model.train()
    return (np.concatenate(means), np.concatenate(maxes)) if with_max else np.concatenate(means)


#: The bundled sample: a held-out phantom (1024 px tall, non-square) with one planted finding.
SAMPLE_SEED = 2_000_003
SAMPLE_FINDING = "Pleural Effusion"


def write_sample(path: Path, seed: int = SAMPLE_SEED, finding: str = SAMPLE_FINDING) -> None:
    """Render the bundled sample phantom (only ``finding`` planted) to ``path`` as 8-bit PNG."""
    import cv2

    from cxr_edge.atomic import atomic_path
    from cxr_edge.phantoms import PHANTOM_LABELS, render_phantom

    p = render_phantom(
        seed, size=1024, vary_shape=True, findings={k: int(k == finding) for k in PHANTOM_LABELS}
    )
    ok, png = cv2.imencode(".png", p.image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(png.tobytes())
    print(f"wrote {path}: phantom seed {seed}, {p.image.shape[1]}x{p.image.shape[0]}, finding {finding}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="output folder (checkpoint, log, cache)")
    ap.add_argument(
        "--write-sample",
        type=Path,
        default=None,
        help="only render the bundled sample phantom to this PNG and exit",
    )
    ap.add_argument("--train", type=int, default=2400, help="training phantoms (seeds 0..N-1)")
    ap.add_argument("--val", type=int, default=400, help="validation phantoms (threshold choice)")
    ap.add_argument("--epochs", type=float, default=5.0)
    ap.add_argument(
        "--batch", type=int, default=1, help="whole images per step (x G*G patches, image + patch loss)"
    )
    ap.add_argument(
        "--patches",
        type=int,
        default=192,
        help="extra single patches per step, half centred on planted findings (patch loss only)",
    )
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument(
        "--variant", default="tiny", help="MedicalPatchNet preset (tiny = width 0.25, depth 0.25)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="initialisation / augmentation seed")
    ap.add_argument(
        "--patch-loss",
        type=float,
        default=1.0,
        help="weight of the auxiliary per-patch BCE on mask coverage (0: image-level only)",
    )
    ap.add_argument(
        "--patch-pos-weight",
        type=float,
        default=1.0,
        help="positive weight of the per-patch BCE (balanced sampling already over-represents findings)",
    )
    ap.add_argument(
        "--background-target",
        type=float,
        default=0.02,
        help="per-patch BCE target of patches without a finding: > 0 holds their logits near "
        "logit(target) instead of letting them drift, since the image logit is their mean",
    )
    ap.add_argument("--image-loss", type=float, default=1.0, help="weight of the image-level BCE")
    ap.add_argument("--eval-every", type=int, default=600, help="steps between validation AUROC prints")
    ap.add_argument(
        "--export", type=Path, default=None, help="also export the ONNX here (needs cxr_edge.export)"
    )
    args = ap.parse_args(argv)
    if args.write_sample is not None:
        write_sample(args.write_sample)
        return 0
    if args.out is None:
        ap.error("--out is required for training")

    import torch

    from cxr_edge.evaluate.metrics import auroc, youden_threshold
    from cxr_edge.metadata import ModelMetadata
    from cxr_edge.model.checkpoint import save_checkpoint
    from cxr_edge.model.patchnet import MedicalPatchNet, variant_named
    from cxr_edge.phantoms import DEFAULT_PREVALENCE, PHANTOM_LABELS

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    meta = ModelMetadata(labels=PHANTOM_LABELS, variant=variant_named(args.variant))
    size, patch = meta.image_size, meta.patch_size
    t_start = time.time()

    train_seeds = range(args.train)
    val_seeds = range(VAL_SEED_START, VAL_SEED_START + args.val)
    x_train, y_train, cells_train = render_cache(
        args.out / "cache_train.npz", train_seeds, size, args.threads
    )
    x_val, y_val, _ = render_cache(args.out / "cache_val.npz", val_seeds, size, args.threads)
    shift_choices = np.arange(-patch // 2, patch // 2, CELL)
    t_rendered = time.time()

    model = MedicalPatchNet(meta.variant, meta.num_classes)
    # A tiny model on a few thousand images underfits: no dropout / stochastic depth (both are
    # identity in eval mode, so the exported graph is unchanged).
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) or type(module).__name__ == "StochasticDepth":
            module.p = 0.0
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = len(x_train) // args.batch
    total = max(1, int(args.epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.1)
    bce = torch.nn.BCEWithLogitsLoss()
    log: list[dict] = []
    step, running = 0, 0.0
    order = np.array([], dtype=np.int64)
    while step < total:
        if order.size < args.batch:
            order = np.concatenate([order, rng.permutation(len(x_train))])
        idx, order = order[: args.batch], order[args.batch :]
        x = torch.from_numpy(x_train[idx]).float().div_(255.0).unsqueeze(1)
        gain = torch.from_numpy(rng.uniform(0.9, 1.1, (len(idx), 1, 1, 1))).float()
        bias = torch.from_numpy(rng.uniform(-0.03, 0.03, (len(idx), 1, 1, 1))).float()
        x = (x * gain + bias).clamp_(0, 1)
        shifts = rng.choice(shift_choices, size=(len(idx), 2))
        x = shift_batch(x, shifts, patch)
        y = torch.from_numpy(y_train[idx])
        patches = to_patches(x, patch)
        n_grid = patches.shape[0]
        pt, pw = patch_targets(cells_train[idx], shifts, patch)
        if args.patches > 0:
            extra, et, ew = sample_patches(x_train, cells_train, y_train, args.patches, patch, rng)
            patches = torch.cat([patches, torch.from_numpy(extra).float().div_(255.0).unsqueeze(1)])
            pt, pw = np.concatenate([pt, et]), np.concatenate([pw, ew])
        patch_logits = model(patches)
        logits = patch_logits[:n_grid].reshape(len(idx), -1, meta.num_classes).mean(1)
        loss = args.image_loss * bce(logits, y)
        if args.patch_loss > 0:
            pt = torch.from_numpy(np.where(pt > 0.5, 1.0, args.background_target).astype(np.float32))
            pw = torch.from_numpy(pw)
            per = torch.nn.functional.binary_cross_entropy_with_logits(
                patch_logits,
                pt,
                reduction="none",
                pos_weight=torch.full((meta.num_classes,), args.patch_pos_weight),
            )
            loss = loss + args.patch_loss * (per * pw).sum() / pw.sum().clamp(min=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
        if step % args.eval_every == 0 or step == total:
            val_logits, val_max = image_logits(model, x_val, patch, with_max=True)
            aucs = [auroc(y_val[:, c], val_logits[:, c]) for c in range(meta.num_classes)]
            max_aucs = [auroc(y_val[:, c], val_max[:, c]) for c in range(meta.num_classes)]
            entry = {
                "step": step,
                "epoch": step / steps_per_epoch,
                "loss": running,
                "val_auroc": dict(zip(PHANTOM_LABELS, aucs)),
                "val_auroc_max_patch": dict(zip(PHANTOM_LABELS, max_aucs)),
                "minutes": (time.time() - t_start) / 60,
            }
            log.append(entry)
            print(
                f"step {step}/{total} ep {entry['epoch']:.2f} loss {running:.4f} "
                f"val AUROC {' '.join(f'{a:.3f}' for a in aucs)} (max-patch {' '.join(f'{a:.2f}' for a in max_aucs)}) "
                f"({entry['minutes']:.1f} min)",
                flush=True,
            )

    val_logits = image_logits(model, x_val, patch)
    val_prob = 1.0 / (1.0 + np.exp(-val_logits.astype(np.float64)))
    thresholds = tuple(float(youden_threshold(y_val[:, c], val_prob[:, c])) for c in range(meta.num_classes))
    t_end = time.time()
    meta = meta.with_(
        thresholds=thresholds,
        intended_use=(
            "Demo model, trained on synthetic phantoms; not for clinical use. Shows the cxr-edge runtime "
            "working right after install. Use an export of the official MedicalPatchNet weights for real images."
        ),
        training_data=(
            f"{args.train} synthetic chest phantoms (cxr_edge.phantoms, seeds 0-{args.train - 1}, 512 px, "
            f"prevalence {DEFAULT_PREVALENCE} per finding), thresholds by Youden J on {args.val} validation phantoms "
            f"(seeds {VAL_SEED_START}-{VAL_SEED_START + args.val - 1}); no real patient images. "
            f"tools/train_demo.py, {args.epochs:g} epochs, batch {args.batch}, AdamW lr {args.lr:g}, "
            f"{args.patches} extra patches per step (half centred on findings); {args.image_loss:g} x image-level "
            f"BCE on the mean patch logit + {args.patch_loss:g} x per-patch BCE (positive weight "
            f"{args.patch_pos_weight:g}, background target {args.background_target:g}) on phantom mask coverage."
        ),
    )
    ckpt = save_checkpoint(model, args.out / "demo_model.pt", meta)
    summary = {
        "checkpoint": str(ckpt),
        "labels": list(PHANTOM_LABELS),
        "thresholds": dict(zip(PHANTOM_LABELS, thresholds)),
        "val_auroc": dict(
            zip(PHANTOM_LABELS, [auroc(y_val[:, c], val_logits[:, c]) for c in range(meta.num_classes)])
        ),
        "render_seconds": t_rendered - t_start,
        "train_seconds": t_end - t_rendered,
        "wall_seconds": t_end - t_start,
        "threads": args.threads,
        "args": {k: str(v) for k, v in vars(args).items()},
        "log": log,
    }
    (args.out / "train_log.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("thresholds", "val_auroc", "wall_seconds")}, indent=1))
    if args.export is not None:
        from cxr_edge.export import export_onnx
        from cxr_edge.model.checkpoint import read_checkpoint

        ck = read_checkpoint(ckpt)
        export_onnx(ck.model, args.export, ck.metadata.with_(checkpoint_sha256=ck.sha256))
        print(f"exported {args.export}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
