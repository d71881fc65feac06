"""Evidence for a finding, as every explanation counts it: the positive part of its map.

A map's value at a pixel is in logit units; red (positive) is evidence for the finding, blue
against (``cxr_edge.render``). The *evidence* of a finding is ``max(map, 0)`` summed over a
region, and a region's *share* is its part of the map's total evidence. The border band is the
frame of width ``BORDER_FRACTION`` of the side (32 px of 512): film edges, collimator shadows
and text markers sit there.
"""

from __future__ import annotations

import numpy as np

#: Width of the model-frame border band, as a fraction of the image side (32 px of 512).
BORDER_FRACTION = 1 / 16


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
