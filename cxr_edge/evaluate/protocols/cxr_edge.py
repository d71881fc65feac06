"""The ``cxr-edge`` protocol: cxr-edge's own quick localization check, in the model frame.

Not a published protocol (its figures are not comparable with CheXlocalize's or the
MedicalPatchNet paper's); kept because it needs no native-resolution resizing and reads the
classifier's decisions. Definitions:

- Frame: the model's N x N frame (the centre crop resized). Ground truth is brought into it
  (``mask_to_model_frame``: area-resized, a pixel belongs to the region when at least half
  covered); truth outside the crop is dropped.
- Hit rate: over positives with a region, whether the map's peak lies in it. The peak is the
  centre of the maximum plateau (``postprocess.map_peak``), not the raster-first maximum.
- mIoU: the predicted region is the pixels >= ``fraction`` (0.5) x the map's maximum (empty
  when the maximum is <= 0), and only when the classifier calls the image positive. IoU is
  averaged over true positives (IoU), false positives (prediction against empty truth: 0) and
  false negatives (0); true negatives and positives without a region are left out.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from cxr_edge.evaluate.protocols.base import MapCase
from cxr_edge.postprocess import map_peak


def threshold_map(value_map: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """``(H, W) bool``: pixels >= fraction x the map's maximum; empty when the maximum is <= 0."""
    peak = float(np.max(value_map))
    if not peak > 0:
        return np.zeros(value_map.shape, bool)
    return np.asarray(value_map >= fraction * peak)


def map_hit(value_map: np.ndarray, truth: np.ndarray) -> bool:
    """True when the peak of ``value_map (H, W)`` (``map_peak``) lies in ``truth (H, W) bool``."""
    return bool(truth[map_peak(value_map)])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
    union = int(np.logical_or(a, b).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(a, b).sum()) / union


def mask_to_model_frame(mask: np.ndarray, crop: tuple[int, int, int], image_size: int) -> np.ndarray:
    """Bring an original-frame mask ``(h, w) bool`` into the model frame ``(S, S) bool``.

    ``crop`` = (top, left, side) of the centre square; the crop is area-resized and a model pixel
    belongs to the region when at least half of it is covered. Regions that would vanish
    (smaller than one model pixel) keep their most covered pixel.
    """
    top, left, side = crop
    sub = mask[top : top + side, left : left + side].astype(np.float32)
    if sub.shape != (side, side):
        padded = np.zeros((side, side), np.float32)
        padded[: sub.shape[0], : sub.shape[1]] = sub
        sub = padded
    cover = (
        sub if side == image_size else cv2.resize(sub, (image_size, image_size), interpolation=cv2.INTER_AREA)
    )
    out = cover >= 0.5
    if not out.any() and cover.max() > 0:
        out.ravel()[int(np.argmax(cover))] = True
    return np.asarray(out)


class CxrEdgeProtocol:
    """cxr-edge's model-frame hit rate and classifier-gated mIoU (module docstring)."""

    name = "cxr-edge"
    metrics: tuple[str, ...] = ("hit_rate", "miou")

    def __init__(self, fraction: float = 0.5) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"the mIoU fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def needs_tuning(self) -> bool:
        return False

    def tuning_sample(self, case: MapCase) -> None:
        return None

    def tune(self, kind: str, label: str, samples: list[Any]) -> None:
        """Nothing to tune."""

    def score(self, case: MapCase) -> dict[str, float]:
        value_map = case.model_map
        size = value_map.shape[0]
        truth = None
        if case.positive and case.truth is not None:
            truth = mask_to_model_frame(case.truth, (case.crop.top, case.crop.left, case.crop.side), size)
        if case.positive and (truth is None or not truth.any()):
            return {"hit_rate": math.nan, "miou": math.nan}  # no region: not scorable
        hit = float(map_hit(value_map, truth)) if truth is not None else math.nan
        if not case.positive and not case.predicted:
            return {"hit_rate": hit, "miou": math.nan}  # true negative: IoU undefined
        if truth is not None and case.predicted:
            return {"hit_rate": hit, "miou": iou(threshold_map(value_map, self.fraction), truth)}
        return {"hit_rate": hit, "miou": 0.0}  # false positive or false negative

    def describe(self, steps: int, kinds: tuple[str, ...]) -> dict[str, Any]:
        return {
            "source": "cxr-edge (its own check; not a published protocol)",
            "definition": (
                "model frame; hit: centre of the maximum plateau in the mask (positives with a mask); "
                f"mIoU: pixels >= {self.fraction} x map maximum when the classifier calls the image "
                "positive, over TP (IoU), FP and FN (0); true negatives left out"
            ),
            "geometry": "model frame (centre crop resized); truth outside the crop dropped",
            "iou_fraction": self.fraction,
            "deviations": [],
        }
