"""Classification metrics (definitions only; the loop is ``evaluate.loop``; localization lives in
``evaluate.protocols``).

Per class: AUROC (Mann-Whitney form, ties count one half) and its ROC curve; at a decision
threshold on the probability: sensitivity, specificity, accuracy; calibration: reliability bins
and the expected calibration error (ECE).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Equal-width probability bins of the reliability diagram and the ECE.
CALIBRATION_BINS = 10


def _labelled_scores(targets: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(y (N,) bool, s (N,) float64, positives, negatives)`` of 0/1 ``targets`` and ``scores``."""
    y = np.asarray(targets).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"targets {y.shape} and scores {s.shape} differ in shape")
    n_pos = int(y.sum())
    return y, s, n_pos, y.size - n_pos


def auroc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for 0/1 ``targets`` (both ``(N,)``).

    Equals P(score of a random positive > score of a random negative) + 0.5 P(tie), computed from
    average ranks in O(N log N). NaN when only one class is present.
    """
    y, s, n_pos, n_neg = _labelled_scores(targets, scores)
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


def roc_curve(targets: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of ``scores`` for 0/1 ``targets`` (both ``(N,)``): ``(fpr, tpr, thresholds)``.

    One point per distinct score, calling "positive" every score >= that threshold, from the
    highest threshold down, plus the origin (threshold +inf). Trapezoids under it sum to
    ``auroc`` (a run of tied scores is one diagonal step, worth one half). Needs both classes.
    """
    y, s, n_pos, n_neg = _labelled_scores(targets, scores)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a ROC curve needs positives and negatives")
    levels, inverse = np.unique(s, return_inverse=True)
    pos = np.bincount(inverse, weights=y, minlength=levels.size)[::-1]
    neg = np.bincount(inverse, weights=~y, minlength=levels.size)[::-1]
    tpr = np.concatenate([[0.0], np.cumsum(pos) / n_pos])
    fpr = np.concatenate([[0.0], np.cumsum(neg) / n_neg])
    return fpr, tpr, np.concatenate([[np.inf], levels[::-1]])


@dataclass(frozen=True)
class ReliabilityBin:
    """Cases whose probability lies in ``[lower, upper)`` (the last bin includes 1): how many,
    their mean probability and the fraction that are positive (NaN for an empty bin)."""

    lower: float
    upper: float
    count: int
    mean_probability: float
    positive_fraction: float


def reliability_bins(
    targets: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS
) -> list[ReliabilityBin]:
    """``bins`` equal-width probability bins over [0, 1] (the reliability diagram's data)."""
    y = np.asarray(targets, dtype=np.float64).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"targets {y.shape} and probabilities {p.shape} differ in shape")
    index = np.clip(np.floor(p * bins).astype(np.int64), 0, bins - 1)
    out = []
    for b in range(bins):
        sel = index == b
        n = int(sel.sum())
        out.append(
            ReliabilityBin(
                lower=b / bins,
                upper=(b + 1) / bins,
                count=n,
                mean_probability=float(p[sel].mean()) if n else float("nan"),
                positive_fraction=float(y[sel].mean()) if n else float("nan"),
            )
        )
    return out


def expected_calibration_error(
    targets: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS
) -> float:
    """ECE: sum over ``reliability_bins`` of (count / N) x |positive fraction - mean probability|
    (equal-width bins, empty bins contribute nothing). NaN without cases."""
    return ece_from_bins(reliability_bins(targets, probabilities, bins))


def ece_from_bins(table: Sequence[ReliabilityBin]) -> float:
    """``expected_calibration_error`` of bins ``reliability_bins`` made already. NaN without cases."""
    total = sum(b.count for b in table)
    if total == 0:
        return float("nan")
    return float(
        sum(b.count / total * abs(b.positive_fraction - b.mean_probability) for b in table if b.count)
    )
