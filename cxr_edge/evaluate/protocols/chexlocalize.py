"""The ``chexlocalize`` protocol: hit rate and mIoU as CheXlocalize's official code computes them.

Source: rajpurkarlab/cheXlocalize at tag v1.0.0 (the version the MedicalPatchNet paper cites):
``eval.py`` (``get_map``, ``get_hitrates``, ``calculate_iou``, ``get_ious``, ``bootstrap_metric``,
``compute_cis``), ``heatmap_to_segmentation.py`` (``cam_to_segmentation``, ``pkl_to_mask``) and
``tune_heatmap_threshold.py`` (``tune_threshold``). Read, not copied; definitions:

- The map is resized bilinearly (``F.interpolate``, ``align_corners=False``) to the native image;
  the ground truth stays at native resolution. Here the model's map covers its centre crop, so
  it is resized to the crop and put back there (``geometry.crop_placed``; on a non-square image
  the native pixels outside the crop carry no map value: never a peak, never predicted).
- **Hit rate** (``get_hitrates``): over images whose ground-truth region is non-empty, whether
  the pixel of the first ``np.argmax`` (raster order) of the resized map lies inside it. Every
  image counts, whatever the classifier says; an image without a region (a negative, or a
  positive without a mask) is NaN (left out).
- **Segmentation** (``cam_to_segmentation``): the resized map is min-max normalised (float32,
  ``(m - min) / max(m - min)``; a constant map gives no region). Default: Otsu's threshold on
  ``uint8(255 * m)`` (``cv2.THRESH_OTSU``), then the outer and inner contours
  (``cv2.RETR_TREE``, ``CHAIN_APPROX_SIMPLE``) with more than one point are drawn filled (holes
  filled, isolated single pixels dropped). With per-pathology thresholds: ``m > t`` (strict, in
  float32, the map's precision).
  No probability cutoff (``pkl_to_mask``'s default ``prob_cutoff=0``).
- **IoU** (``calculate_iou``): with ``true_pos_only`` (the default) NaN unless both the predicted
  and the true region are non-empty; without it NaN only when both are empty (so a non-empty
  prediction on a negative scores 0, and so does a missed positive). A positive without a mask
  is empty ground truth. mIoU = mean of the non-NaN IoUs. Reported here as ``miou_tp_only``
  (the default) and ``miou_tp_fp_fn``.
- **Tuned thresholds** (``tune_threshold``): per pathology, the first of ``np.arange(0.2, 0.8,
  0.1)`` (0.2 .. 0.8, seven values) maximising the TP-only mIoU of the tuning split, rounded to
  one decimal; used for both IoU figures.
- **Summary**: per pathology, then averaged over pathologies; 1000 bootstrap replicates,
  mean and 95 % interval (``evaluate.bootstrap``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from cxr_edge.evaluate.geometry import NativeMap, crop_placed
from cxr_edge.evaluate.protocols.base import MapCase

SOURCE = (
    "rajpurkarlab/cheXlocalize tag v1.0.0: eval.py (get_map, get_hitrates, calculate_iou, get_ious, "
    "bootstrap_metric, compute_cis), heatmap_to_segmentation.py (cam_to_segmentation, pkl_to_mask), "
    "tune_heatmap_threshold.py (tune_threshold)"
)
#: ``tune_heatmap_threshold.tune_threshold``'s candidates, exactly as numpy makes them (0.8 included).
TUNING_GRID: tuple[float, ...] = tuple(float(t) for t in np.arange(0.2, 0.8, 0.1))


def normalise(values: np.ndarray) -> np.ndarray | None:
    """Min-max normalised ``float32`` copy of a map, or None for a constant map (no region)."""
    v = np.asarray(values, dtype=np.float32)
    shifted = v - v.min()
    top = shifted.max()
    if not top > 0:
        return None
    out: np.ndarray = shifted / top
    return out


def otsu_region(norm: np.ndarray) -> np.ndarray:
    """CheXlocalize's default segmentation of a normalised map: Otsu on ``uint8(255 m)``, filled
    contours of more than one point. ``(H, W) bool``."""
    levels = (norm * np.float32(255)).astype(np.uint8)  # truncation, like np.uint8(255 * mask)
    top = int(levels.max())
    region = np.zeros(levels.shape, np.uint8)
    if top == 0:
        return region.astype(bool)
    _, binary = cv2.threshold(levels, 0, top, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    contours, _ = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    for contour in contours:
        if len(contour) > 1:
            # one contour at a time, so an inner (hole) contour is filled too
            cv2.drawContours(region, [contour], 0, 1, thickness=cv2.FILLED)
    return region.astype(bool)


def segment(norm: np.ndarray | None, rule: str | float) -> np.ndarray | None:
    """Predicted region of a normalised map: ``otsu_region`` or ``norm > rule``; None when the
    map is constant (an empty region)."""
    if norm is None:
        return None
    if rule == "otsu":
        return otsu_region(norm)
    # float32 like the map: the official code (numpy 1.x) compares its float32 map with the
    # threshold scalar in float32
    return np.asarray(norm > np.float32(rule))


def hit(native: NativeMap, truth: np.ndarray | None) -> float:
    """1.0 when the first maximum of the map lies in ``truth (h, w) bool``, 0.0 when not, NaN
    without a (non-empty) region."""
    if truth is None or not truth.any():
        return math.nan
    r, c = native.first_argmax()
    return 1.0 if truth[r, c] else 0.0


def region_iou(predicted: int, truth: int, intersection: int, tp_only: bool) -> float:
    """``calculate_iou`` from pixel counts: NaN unless both regions are non-empty (``tp_only``),
    else NaN only when the union is empty."""
    union = predicted + truth - intersection
    if tp_only and (predicted == 0 or truth == 0):
        return math.nan
    if union == 0:
        return math.nan
    return intersection / union


def case_iou(native: NativeMap, region: np.ndarray | None, truth: np.ndarray | None, tp_only: bool) -> float:
    """IoU of a predicted region (on the map's defined part; None = empty) with the native truth."""
    truth_count = 0 if truth is None else int(truth.sum())
    if region is None:
        return region_iou(0, truth_count, 0, tp_only)
    inter = int(np.logical_and(region, native.within(truth)).sum()) if truth is not None else 0
    return region_iou(int(region.sum()), truth_count, inter, tp_only)


@dataclass(frozen=True)
class IouCurve:
    """A case's IoU for every threshold ``t`` of the rule ``norm > t``, exactly.

    levels: the distinct normalised values, ascending; above: ``(L + 1,)`` pixels with a value
    >= levels[k] (``above[L] = 0``); truth_above: the same inside the truth; truth: truth pixels
    (native, also those outside the map). ``levels`` is empty for a constant map.
    """

    levels: np.ndarray
    above: np.ndarray
    truth_above: np.ndarray
    truth: int

    @classmethod
    def of(cls, norm: np.ndarray | None, truth_in_map: np.ndarray | None, truth: int) -> IouCurve:
        if norm is None:
            zero = np.zeros(1, np.int64)
            return cls(np.zeros(0, np.float32), zero, zero, truth)
        levels, inverse = np.unique(norm.ravel(), return_inverse=True)
        counts = np.bincount(inverse, minlength=levels.size)
        inside = (
            np.bincount(inverse, weights=truth_in_map.ravel(), minlength=levels.size).astype(np.int64)
            if truth_in_map is not None
            else np.zeros(levels.size, np.int64)
        )
        above = np.concatenate([np.cumsum(counts[::-1])[::-1], [0]]).astype(np.int64)
        truth_above = np.concatenate([np.cumsum(inside[::-1])[::-1], [0]]).astype(np.int64)
        return cls(levels, above, truth_above, truth)

    def iou(self, threshold: float, tp_only: bool) -> float:
        first = int(np.searchsorted(self.levels, np.float32(threshold), side="right"))  # first level > t
        return region_iou(int(self.above[first]), self.truth, int(self.truth_above[first]), tp_only)


def curve_miou(curves: list[IouCurve], threshold: float, tp_only: bool) -> float:
    """mIoU of the tuning cases at ``threshold`` (``np.nanmean``; NaN when none counts)."""
    values = [c.iou(threshold, tp_only) for c in curves]
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def grid_threshold(curves: list[IouCurve]) -> float:
    """``tune_threshold``: the first grid value with the largest TP-only mIoU, rounded to one
    decimal. When no tuning case counts at all, the official ``list.index(max(...))`` of all-NaN
    mIoUs picks the first candidate, 0.2; so does this."""
    best, best_t = -math.inf, TUNING_GRID[0]
    for t in TUNING_GRID:
        m = curve_miou(curves, t, tp_only=True)
        if not math.isnan(m) and m > best:
            best, best_t = m, t
    return round(best_t, 1)


class CheXlocalizeProtocol:
    """CheXlocalize v1.0.0's hit rate and mIoU (module docstring), on crop-placed native maps."""

    name = "chexlocalize"
    metrics: tuple[str, ...] = ("hit_rate", "miou_tp_only", "miou_tp_fp_fn")

    def __init__(self, rule: str | float = "otsu") -> None:
        """rule: "otsu" (CheXlocalize's default), "tuned" (``tune_threshold`` on a tuning split)
        or a fixed threshold on the normalised map."""
        self.rule = rule
        self.thresholds: dict[tuple[str, str, str], float] = {}  # (kind, label, metric) -> t

    def native(self, case: MapCase) -> NativeMap:
        """The case's map in native geometry."""
        return crop_placed(case.model_map, case.crop, case.shape)

    def needs_tuning(self) -> bool:
        return self.rule == "tuned"

    def tuning_sample(self, case: MapCase) -> IouCurve:
        native = self.native(case)
        truth = case.truth if case.truth is not None and case.truth.any() else None
        truth_in = None if truth is None else native.within(truth)
        return IouCurve.of(normalise(native.values), truth_in, 0 if truth is None else int(truth.sum()))

    def tune(self, kind: str, label: str, samples: list[Any]) -> None:
        t = grid_threshold(samples)
        for metric in ("miou_tp_only", "miou_tp_fp_fn"):
            self.thresholds[(kind, label, metric)] = t

    def rule_for(self, kind: str, label: str, metric: str) -> str | float:
        if self.rule != "tuned":
            return self.rule
        try:
            return self.thresholds[(kind, label, metric)]
        except KeyError:
            raise RuntimeError(f"{self.name}: no tuned threshold for {label} ({kind}); tune first") from None

    def score(self, case: MapCase) -> dict[str, float]:
        native = self.native(case)
        truth = case.truth if case.truth is not None and case.truth.any() else None
        norm = normalise(native.values)
        out = {"hit_rate": hit(native, truth)}
        regions: dict[str | float, np.ndarray | None] = {}
        for metric, tp_only in (("miou_tp_only", True), ("miou_tp_fp_fn", False)):
            rule = self.rule_for(case.kind, case.label, metric)
            if rule not in regions:
                regions[rule] = segment(norm, rule)
            out[metric] = case_iou(native, regions[rule], truth, tp_only)
        return out

    def describe(self, steps: int, kinds: tuple[str, ...]) -> dict[str, Any]:
        return {
            "source": SOURCE,
            "definition": (
                "hit: first argmax of the map resized bilinearly to the native image lies in the "
                "native mask, over images with a non-empty mask; mIoU: min-max normalised map, "
                + ("Otsu + filled contours" if self.rule == "otsu" else "map > threshold")
                + "; miou_tp_only counts images with both regions non-empty (CheXlocalize's "
                "default), miou_tp_fp_fn every image with a non-empty union; no probability cutoff"
            ),
            "geometry": "map resized to the model's centre crop and placed there (native pixels "
            "outside the crop carry no map value)",
            "threshold_rule": self.rule,
            "thresholds": _thresholds_json(self.thresholds),
            "deviations": [],
        }


def _thresholds_json(thresholds: dict[tuple[str, str, str], float]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (kind, label, metric), t in thresholds.items():
        out.setdefault(kind, {}).setdefault(label, {})[metric] = t
    return out
