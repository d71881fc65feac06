"""Decisive patches: the smallest set of patches whose evidence, neutralised, reverses a call.

A finding's image logit is the mean of the G*G patch logits ``l_i`` of the unshifted image
(``SaliencyMaps.patch_logits``), so with the decision threshold as a logit ``t`` the call is

    positive  <=>  mean(l_i) >= t  <=>  E = sum_i (l_i - t) >= 0.

*Neutralising* patch i replaces ``l_i`` by ``t`` (it then votes neither way), which removes its
term ``e_i = l_i - t`` from E. So:

- a positive call turns negative once the neutralised set D has ``sum_D e_i > E``. The largest
  sum of k terms is that of the k largest, so taking patches in descending ``e_i`` until the
  sum exceeds E gives the smallest D (tests/test_decisive.py checks this against brute force).
  If every ``e_i >= 0`` no set reverses the call (neutralising all of them leaves the mean at
  the threshold, still positive): ``reverses`` is False and no patches are named.
- a negative call turns positive once ``sum_D (-e_i) >= -E``: the same argument with the
  patches in ascending ``e_i`` (the strongest evidence against first). This always succeeds
  (neutralising every patch below the threshold does). These are the patches that hold the
  call negative.

``share``: the set's part of the evidence on its side of the threshold, ``sum_D e_i /
sum_i max(e_i, 0)`` for a positive call and ``sum_D e_i / sum_i min(e_i, 0)`` for a negative one.

Without model thresholds the reference is probability 0.5 (logit 0): the call is "above or
below even odds", reported as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr_edge.prediction import Prediction

#: Reference probability for models without decision thresholds (logit 0).
NO_THRESHOLD_PROBABILITY = 0.5


@dataclass(frozen=True)
class DecisivePatches:
    """The decisive patches of one finding's call.

    label: the finding; positive: the call (probability >= reference); reference_probability:
    the decision threshold, or 0.5 without one (``thresholded`` says which); patches: ``(row,
    col)`` in the model's G x G patch grid, most decisive first; reverses: False when no set of
    patches reverses the call (then ``patches`` is empty); share: their part of the evidence on
    the call's side (None when there is none); grid_patches: G*G.
    """

    label: str
    positive: bool
    reference_probability: float
    thresholded: bool
    patches: tuple[tuple[int, int], ...]
    reverses: bool
    share: float | None
    grid_patches: int

    @property
    def count(self) -> int | None:
        """How many patches reverse the call; None when none do."""
        return len(self.patches) if self.reverses else None


def probability_logit(probability: float) -> float:
    """log(p / (1 - p)) in float64; -inf / +inf at 0 and 1."""
    if probability <= 0.0:
        return -math.inf
    if probability >= 1.0:
        return math.inf
    return math.log(probability) - math.log1p(-probability)


def decisive_order(
    patch_logits: np.ndarray, reference_logit: float, positive: bool
) -> tuple[np.ndarray, bool, float | None]:
    """The decisive set of one call (see the module docstring), in float64.

    patch_logits: ``(G, G)`` or ``(G*G,)`` patch logits; reference_logit: t; positive: the call.
    Returns ``(indices, reverses, share)``: flat patch indices (row*G + col), most decisive
    first (ties in patch order), empty when ``reverses`` is False.
    """
    if not math.isfinite(reference_logit):
        return np.zeros(0, dtype=np.int64), False, None  # threshold 0 or 1: nothing can reverse it
    e = np.asarray(patch_logits, dtype=np.float64).ravel() - float(reference_logit)
    # Orient so that "for the call" is positive: v_i = e_i (positive call) or -e_i (negative).
    v = e if positive else -e
    order = np.argsort(-v, kind="stable")
    gained = np.cumsum(v[order])
    # positive: need sum_D e_i > E; negative: need sum_D (-e_i) >= -E. E (resp. -E) is taken
    # as the last partial sum, so the full set compares equal to it without rounding noise.
    margin = float(gained[-1])
    hits = np.flatnonzero(gained > margin) if positive else np.flatnonzero(gained >= margin)
    side = float(np.clip(v, 0.0, None).sum())
    if len(hits) == 0:
        return np.zeros(0, dtype=np.int64), False, None
    k = int(hits[0]) + 1
    share = float(gained[k - 1]) / side if side > 0 else None
    return order[:k].astype(np.int64), True, share


def decisive_patches(prediction: Prediction, label: str) -> DecisivePatches:
    """The decisive patches of ``label``'s call in ``prediction`` (module docstring)."""
    finding = prediction.finding(label)
    c = prediction.metadata.label_index(label)
    patch_logits = np.asarray(prediction.maps.patch_logits[c])
    grid = patch_logits.shape[-1]
    thresholded = finding.threshold is not None
    reference = float(finding.threshold) if finding.threshold is not None else NO_THRESHOLD_PROBABILITY
    positive = bool(finding.positive) if finding.positive is not None else finding.probability >= reference
    indices, reverses, share = decisive_order(patch_logits, probability_logit(reference), positive)
    patches = tuple((int(i) // grid, int(i) % grid) for i in indices)
    return DecisivePatches(
        label=finding.label,
        positive=positive,
        reference_probability=reference,
        thresholded=thresholded,
        patches=patches,
        reverses=reverses,
        share=share,
        grid_patches=int(patch_logits.size),
    )


def decisive_json(decisive: DecisivePatches) -> dict[str, Any]:
    """The report's ``decisive_patches`` entry: ``count`` (null when nothing reverses the call),
    ``patches`` [[row, col], ...] most decisive first, ``share``, ``call``, ``reference``
    ("threshold" or "probability 0.5 (no threshold)"), ``reference_probability``, ``reverses``."""
    return {
        "count": decisive.count,
        "patches": [[r, c] for r, c in decisive.patches],
        "share": None if decisive.share is None else round(decisive.share, 6),
        "call": "positive" if decisive.positive else "negative",
        "reference": "threshold" if decisive.thresholded else "probability 0.5 (no threshold)",
        "reference_probability": decisive.reference_probability,
        "reverses": decisive.reverses,
    }
