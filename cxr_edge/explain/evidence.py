"""Evidence for a finding, as every explanation counts it and the overlay draws it.

A call is positive when the mean patch logit reaches the decision logit ``t`` (the threshold
probability as a logit; 0, i.e. p = 0.5, for a model without thresholds), so each patch pushes
toward the call by ``l - t``. The *decision map* of a finding is its saliency map relative to
``t`` (``decision_map``): the shift average of ``l - t``, zero outside each shifted copy. Its
positive part is the finding's *evidence* for the call (``finding_evidence``: red on the default
overlay; the rationale's zones). The *standalone evidence* (``standalone_evidence``) is the map's
part above logit 0: where patches argue for the finding on their own (p > 0.5), whatever the
threshold; strong, localised evidence of that kind on a film's border or outside the body is
what a shortcut looks like (``shortcuts``), and a broad, weak excess over a low threshold does not
dilute it. A region's *share* is its part of the total of either. The border band is the frame of width ``BORDER_FRACTION`` of
the side (32 px of 512): film edges, collimator shadows and text markers sit there.
"""

from __future__ import annotations

import math

import numpy as np

from cxr_edge.prediction import Prediction

#: Width of the model-frame border band, as a fraction of the image side (32 px of 512).
BORDER_FRACTION = 1 / 16


def probability_logit(probability: float) -> float:
    """log(p / (1 - p)) in float64; -inf / +inf at 0 and 1."""
    if probability <= 0.0:
        return -math.inf
    if probability >= 1.0:
        return math.inf
    return math.log(probability) - math.log1p(-probability)


def decision_logit(prediction: Prediction, label: str) -> float:
    """``t`` of one finding: logit(threshold), or 0.0 (p = 0.5) when the model has no thresholds."""
    threshold = prediction.finding(label).threshold
    return 0.0 if threshold is None else probability_logit(threshold)


def shift_coverage(steps: int, image_size: int, patch_size: int) -> np.ndarray:
    """(N,) float64: the share of the S shift offsets for which a model-frame row (or column)
    lies inside the shifted-back patch map (1 everywhere for S = 1; less within P/2 of the
    edges, where a shifted copy's map is zero-filled). A pixel's share is row x column."""
    from cxr_edge.tile import shift_offsets

    offsets = shift_offsets(steps, patch_size)
    y = np.arange(image_size)[:, None] - offsets[None, :]
    inside: np.ndarray = ((y >= 0) & (y < image_size)).mean(axis=1)
    return inside


def decision_map(
    prediction: Prediction, label: str, map_kind: str = "scaled", centre_logit: float | None = None
) -> np.ndarray:
    """(N, N) float32: the finding's map relative to ``centre_logit`` (default: the decision
    logit ``t``).

    raw: ``raw - t * coverage`` = the shift average of (patch logit - t), zero outside each
    shifted copy (``shift_coverage``); exactly the per-patch terms of the decision at S = 1.
    scaled: ``scaled - t * p * coverage`` with p the image probability (each copy's own
    probability weighs its patches; the unshifted one's stands in for all, exact at S = 1).
    """
    value_map = prediction.value_map(label, map_kind)
    t = decision_logit(prediction, label) if centre_logit is None else centre_logit
    if t == 0.0:
        return value_map
    md = prediction.metadata
    cov = shift_coverage(prediction.steps, md.image_size, md.patch_size)
    weight = t * prediction.finding(label).probability if map_kind == "scaled" else t
    out: np.ndarray = value_map - (weight * np.outer(cov, cov)).astype(np.float32)
    return out


def finding_evidence(prediction: Prediction, label: str, map_kind: str = "scaled") -> np.ndarray:
    """``(N, N) float64 >= 0``: the positive part of the finding's ``decision_map``."""
    return positive_evidence(decision_map(prediction, label, map_kind))


def standalone_evidence(prediction: Prediction, label: str, map_kind: str = "scaled") -> np.ndarray:
    """``(N, N) float64 >= 0``: the positive part of the finding's map itself (above logit 0)."""
    return positive_evidence(prediction.value_map(label, map_kind))


def positive_evidence(value_map: np.ndarray) -> np.ndarray:
    """``max(map, 0)`` of an ``(N, N)`` map in logit units, as ``(N, N) float64``."""
    positive: np.ndarray = np.clip(np.asarray(value_map, dtype=np.float64), 0.0, None)
    return positive


def border_band_width(size: int) -> int:
    """Width in pixels of the border band of a ``size`` x ``size`` frame (at least 1)."""
    return max(1, round(size * BORDER_FRACTION))


def border_band(size: int) -> np.ndarray:
    """``(size, size) bool``: True in the border band."""
    band = border_band_width(size)
    mask = np.ones((size, size), dtype=bool)
    mask[band : size - band, band : size - band] = False
    return mask


def evidence_share(positive: np.ndarray, region: np.ndarray) -> float | None:
    """Share of the evidence ``positive (N, N) float64 >= 0`` that lies in ``region (N, N) bool``;
    None when the map holds no evidence at all."""
    total = float(positive.sum())
    if not total > 0:
        return None
    return float(positive[region].sum()) / total
