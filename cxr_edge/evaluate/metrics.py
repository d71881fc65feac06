"""Classification and localization metrics (definitions only; the loop is ``evaluate.loop``).

Classification (per class): AUROC (Mann-Whitney form, ties count one half), and at a decision
threshold on the probability: sensitivity, specificity, accuracy.

Localization, as CheXlocalize does it, on saliency maps in the model frame
(``(H, W) float32``, H = W = image_size) against ground-truth masks brought into that frame:

- hit rate ("pointing game"): over ground-truth-positive images, the fraction whose map maximum
  lies inside the ground-truth region;
- mIoU: the map is thresholded into a predicted region (pixels >= ``fraction`` x the map's
  positive maximum; empty when the classifier calls the image negative or the map has no
  positive value), and IoU with the ground truth is averaged over true positives, false
  positives (prediction vs. empty truth: IoU 0) and false negatives (IoU 0); true negatives
  are left out since IoU is undefined there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from cxr_edge.postprocess import map_peak


def auroc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for 0/1 ``targets`` (both ``(N,)``).

    Equals P(score of a random positive > score of a random negative) + 0.5 P(tie), computed from
    average ranks in O(N log N). NaN when only one class is present.
    """
    y = np.asarray(targets).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"targets {y.shape} and scores {s.shape} differ in shape")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average 1-based rank over each run of equal scores
    start = 0
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    for end in [*boundaries.tolist(), s.size]:
        ranks[order[start:end]] = (start + 1 + end) / 2.0
        start = end
    rank_sum = ranks[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass(frozen=True)
class BinaryCounts:
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def sensitivity(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def specificity(self) -> float:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else float("nan")

    @property
    def accuracy(self) -> float:
        n = self.tp + self.fp + self.tn + self.fn
        return (self.tp + self.tn) / n if n else float("nan")


def binary_counts(targets: np.ndarray, probabilities: np.ndarray, threshold: float) -> BinaryCounts:
    """Confusion counts with "positive" meaning ``probability >= threshold``."""
    y = np.asarray(targets).astype(bool).ravel()
    pred = np.asarray(probabilities, dtype=np.float64).ravel() >= threshold
    return BinaryCounts(
        tp=int((y & pred).sum()),
        fp=int((~y & pred).sum()),
        tn=int((~y & ~pred).sum()),
        fn=int((y & ~pred).sum()),
    )


def youden_threshold(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 (ties: the largest such threshold).

    Returned as the midpoint between the chosen score and the next lower one, so tiny numeric
    differences between runtimes do not flip decisions on the validation cases themselves.
    """
    y = np.asarray(targets).astype(bool).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if y.all() or not y.any():
        return 0.5
    candidates = np.unique(p)[::-1]
    best, best_t = -np.inf, 0.5
    for i, t in enumerate(candidates):
        c = binary_counts(y, p, t)
        j = c.sensitivity + c.specificity - 1.0
        if j > best + 1e-12:
            lower = candidates[i + 1] if i + 1 < candidates.size else t
            best, best_t = j, float((t + lower) / 2.0)
    return best_t


def map_hit(value_map: np.ndarray, truth: np.ndarray) -> bool:
    """True when the maximum of ``value_map (H, W)`` (``map_peak``) lies in ``truth (H, W) bool``."""
    return bool(truth[map_peak(value_map)])


def threshold_map(value_map: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """``(H, W) bool``: pixels >= fraction x the map's maximum; empty when the maximum is <= 0."""
    peak = float(np.max(value_map))
    if not peak > 0:
        return np.zeros(value_map.shape, bool)
    return value_map >= fraction * peak


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
    return out


@dataclass
class LocalizationTally:
    """Running localization metrics of one class and one map kind."""

    hits: int = 0
    pointed: int = 0  # ground-truth positive cases with a mask
    ious: list[float] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=lambda: {"tp": 0, "fp": 0, "fn": 0})

    def add(
        self,
        value_map: np.ndarray,
        truth: np.ndarray | None,
        gt_positive: bool,
        predicted: bool,
        fraction: float = 0.5,
    ) -> None:
        """One case. ``truth`` is None when the case has no localization ground truth."""
        if gt_positive and (truth is None or not truth.any()):
            return  # positive without a region: cannot be scored for localization
        if gt_positive:
            self.pointed += 1
            self.hits += map_hit(value_map, truth)  # type: ignore[arg-type]  # checked above
        if not gt_positive and not predicted:
            return  # true negative: IoU undefined
        region = threshold_map(value_map, fraction) if predicted else np.zeros(value_map.shape, bool)
        gt = truth if (gt_positive and truth is not None) else np.zeros(value_map.shape, bool)
        kind = "tp" if gt_positive and predicted else ("fp" if predicted else "fn")
        self.kinds[kind] += 1
        self.ious.append(iou(region, gt) if kind == "tp" else 0.0)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.pointed if self.pointed else float("nan")

    @property
    def miou(self) -> float:
        return float(np.mean(self.ious)) if self.ious else float("nan")
