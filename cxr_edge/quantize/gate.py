"""Accuracy gate: a reduced-precision ONNX against its float32 source, on held-out images.

Both models run through the pipeline (``CxrEdge`` on ONNX Runtime, CPU), exactly like ``infer``.
Measures:
- image logits (mean of the 64 unshifted patch logits) of every gate image, compared element by
  element with ``cxr_edge.compare`` at the candidate precision's tolerance (``BY_PRECISION``);
- per-class AUROC difference on labelled phantoms (classes with both outcomes present);
- Pearson r of the S=4 smooth scaled saliency maps, per image over all classes (real + phantoms);
- speed: median seconds for the same patch batch, float32 vs candidate, runs interleaved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxr_edge.compare import BY_PRECISION, Comparison, compare
from cxr_edge.errors import CxrEdgeError
from cxr_edge.evaluate.metrics import auroc

if TYPE_CHECKING:
    from cxr_edge.backends.base import PatchBackend
    from cxr_edge.metadata import ModelMetadata
    from cxr_edge.pipeline import CxrEdge

GATE_STEPS = 4
#: Shift grid of the patches a TensorRT plan is checked on (``check_patches``) and of the batch
#: the gate times both models on (``run_gate``).
CHECK_STEPS = 2
MIN_MAP_R = 0.98
MAX_AUROC_DIFF = 0.01
#: Phantom seeds far from any training range, so gate phantoms are held out.
HELDOUT_PHANTOM_SEED = 7_000_000


@dataclass(frozen=True)
class GateImage:
    """An X-ray for the gate: a path or an ``(h, w) uint8`` array, as ``CxrEdge.predict`` takes it;
    ``labels`` ``(C,)`` 0/1 (-1 unknown) or None; ``maps``: whether the (costlier) S=4 map
    comparison runs on it."""

    name: str
    image: str | Path | np.ndarray
    labels: np.ndarray | None
    maps: bool


@dataclass
class GateReport:
    """``logits``: image logits ``(images, C)`` of the candidate against float32 (elementwise)."""

    precision: str
    logits: Comparison
    auroc_diff: dict[str, float]
    map_r: dict[str, float]
    n_auroc_images: int
    seconds_fp32: float | None = None
    seconds_candidate: float | None = None
    speed_patches: int = 0
    min_map_r: float = MIN_MAP_R
    max_auroc_diff: float = MAX_AUROC_DIFF
    notes: list[str] = field(default_factory=list)

    @property
    def max_abs_logit_diff(self) -> float:
        return self.logits.max_abs_diff

    @property
    def worst_map_r(self) -> float:
        return min(self.map_r.values()) if self.map_r else float("nan")

    @property
    def worst_auroc_diff(self) -> float:
        return max(self.auroc_diff.values()) if self.auroc_diff else 0.0

    @property
    def passed(self) -> bool:
        return (
            bool(self.map_r)
            and self.worst_map_r >= self.min_map_r
            and self.worst_auroc_diff <= self.max_auroc_diff
            and self.logits.passed
        )

    def lines(self) -> list[str]:
        """The human-readable gate, printed by ``cxr-edge quantize`` every time."""
        out = [f"accuracy gate ({self.precision} vs fp32, ONNX Runtime CPU):"]
        out.append(f"  image logits: {self.logits.summary()}")
        if self.auroc_diff:
            worst = max(self.auroc_diff, key=lambda k: self.auroc_diff[k])
            out.append(
                f"  AUROC diff (phantoms, n={self.n_auroc_images}) max {self.worst_auroc_diff:.4f} ({worst}); limit "
                f"{self.max_auroc_diff}"
            )
            out.append("    " + ", ".join(f"{k}: {v:.4f}" for k, v in self.auroc_diff.items()))
        else:
            out.append("  AUROC diff                  n/a (no labelled images)")
        if self.map_r:
            rs = np.array(list(self.map_r.values()))
            out.append(
                f"  S={GATE_STEPS} map Pearson r (n={len(rs)})  min {rs.min():.4f}, mean {rs.mean():.4f}; "
                f"limit >= {self.min_map_r}"
            )
        if self.seconds_fp32 and self.seconds_candidate:
            ratio = self.seconds_fp32 / self.seconds_candidate
            out.append(
                f"  CPU speed: fp32 {self.seconds_fp32 * 1e3:.0f} ms, {self.precision} "
                f"{self.seconds_candidate * 1e3:.0f} ms per {self.speed_patches} patches (median) -> {ratio:.2f}x"
            )
        out += [f"  note: {n}" for n in self.notes]
        out.append(f"  result: {'PASSED' if self.passed else 'FAILED'}")
        return out


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def phantom_gate_images(count: int, image_size: int, labels: tuple[str, ...], maps: int) -> list[GateImage]:
    """Held-out labelled phantoms (seeds from HELDOUT_PHANTOM_SEED), the first ``maps`` with maps."""
    from cxr_edge.phantoms import render_phantom

    images = []
    for index in range(count):
        phantom = render_phantom(HELDOUT_PHANTOM_SEED + index, size=image_size)
        vector = np.array([phantom.labels.get(name, -1) for name in labels], dtype=np.float32)
        images.append(GateImage(f"phantom:{phantom.seed}", phantom.image, vector, index < maps))
    return images


def real_gate_images(paths: list[Path]) -> list[GateImage]:
    """Held-out real X-rays (no labels used), all compared on maps."""
    return [GateImage(str(p), p, None, True) for p in paths]


def _image_logits_and_maps(edge: CxrEdge, image: GateImage) -> tuple[np.ndarray, np.ndarray | None]:
    """Image logits ``(C,)`` and, for map images, the S=4 scaled maps ``(C, N, N)``."""
    prediction = edge.predict(image.image, steps=GATE_STEPS if image.maps else 1)
    return prediction.maps.logits, prediction.maps.scaled if image.maps else None


def check_patches(images: list[GateImage], metadata: ModelMetadata) -> np.ndarray:
    """The S=2 shifted copies of every map image, ``(4 * images * 64, 1, P, P) float32``, prepared
    like ``infer``: what a TensorRT plan is checked on (zero-padded patches included)."""
    from cxr_edge.pipeline import prepare_image
    from cxr_edge.tile import shift_pairs, tile_shifts

    pairs = shift_pairs(CHECK_STEPS, metadata.patch_size)
    chosen = [image for image in images if image.maps]
    if not chosen:
        raise CxrEdgeError(None, "the plan check needs at least one held-out image with maps")
    return np.concatenate(
        [
            tile_shifts(prepare_image(i.image, metadata).model_input, pairs, metadata.patch_size)
            for i in chosen
        ]
    )


def _median_seconds(backends: list[PatchBackend], patches: np.ndarray, repeats: int) -> list[float]:
    times: list[list[float]] = [[] for _ in backends]
    for backend in backends:
        backend.run(patches[: min(len(patches), 64)])  # warm-up
    for _ in range(repeats):
        for index, backend in enumerate(backends):  # interleaved: load on the shared CPU hits both
            start = time.perf_counter()
            backend.run(patches)
            times[index].append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


def run_gate(
    fp32_onnx: str | Path,
    candidate_onnx: str | Path,
    precision: str,
    images: list[GateImage],
    threads: int | None = None,
    speed_repeats: int = 5,
) -> GateReport:
    """Compare ``candidate_onnx`` with ``fp32_onnx`` on ``images``; time both on one patch batch."""
    from cxr_edge.backends.onnxruntime import OnnxRuntimeBackend
    from cxr_edge.pipeline import CxrEdge

    if not images:
        raise CxrEdgeError(None, "the accuracy gate needs at least one held-out image")
    reference = CxrEdge(OnnxRuntimeBackend(fp32_onnx, threads=threads), fp32_onnx)
    candidate = CxrEdge(OnnxRuntimeBackend(candidate_onnx, threads=threads), candidate_onnx)
    labels = reference.metadata.labels
    ref_logits, cand_logits, map_r = [], [], {}
    for image in images:
        ref_l, ref_map = _image_logits_and_maps(reference, image)
        cand_l, cand_map = _image_logits_and_maps(candidate, image)
        ref_logits.append(ref_l)
        cand_logits.append(cand_l)
        if ref_map is not None and cand_map is not None:
            map_r[image.name] = pearson_r(ref_map, cand_map)
    ref_arr, cand_arr = np.array(ref_logits), np.array(cand_logits)

    auroc_diff: dict[str, float] = {}
    labelled = [i for i, image in enumerate(images) if image.labels is not None]
    if labelled:
        targets = np.array([images[i].labels for i in labelled])
        for c, name in enumerate(labels):
            known = targets[:, c] >= 0
            a_ref = auroc(targets[known, c], ref_arr[labelled][known, c])
            a_cand = auroc(targets[known, c], cand_arr[labelled][known, c])
            if np.isfinite(a_ref) and np.isfinite(a_cand):
                auroc_diff[name] = abs(a_cand - a_ref)

    report = GateReport(
        precision=precision,
        logits=compare(cand_arr, ref_arr, BY_PRECISION[precision]),
        auroc_diff=auroc_diff,
        map_r=map_r,
        n_auroc_images=len(labelled),
    )
    if speed_repeats > 0:
        from cxr_edge.tile import shift_pairs, tile_shifts

        meta = reference.metadata
        prepared = reference.prepare(images[0].image)
        batch = tile_shifts(prepared.model_input, shift_pairs(CHECK_STEPS, meta.patch_size), meta.patch_size)
        report.seconds_fp32, report.seconds_candidate = _median_seconds(
            [reference.backend, candidate.backend], batch, speed_repeats
        )
        report.speed_patches = len(batch)
    return report
