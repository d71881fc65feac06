"""What every localization protocol is given and what it returns.

A protocol scores one (image, class, map kind) at a time: a ``MapCase`` in, a dict of figures
out (``{"hit_rate": 1.0, "miou_tp_only": 0.42, ...}``), NaN where the case does not count for
a figure. The loop collects these into one table per figure (rows = images) and summarises
each column with ``evaluate.bootstrap``. A protocol that tunes its mIoU thresholds first sees
the tuning split's cases (``tuning_sample``), then ``tune`` once per (map kind, class).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from cxr_edge.errors import CxrEdgeError
from cxr_edge.preprocess import CropBox

#: How a protocol binarises maps for mIoU: Otsu's method, thresholds tuned on a split, or a
#: fixed threshold on the min-max normalised map.
THRESHOLD_RULES = ("otsu", "tuned")


def parse_threshold_rule(text: str) -> str | float:
    """ "otsu", "tuned", or a float in [0, 1) (CxrEdgeError otherwise)."""
    if text in THRESHOLD_RULES:
        return text
    try:
        value = float(text)
    except ValueError:
        raise CxrEdgeError(None, f"--iou-threshold must be otsu, tuned or a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise CxrEdgeError(None, f"--iou-threshold must lie in [0, 1), got {value}")
    return value


@dataclass(frozen=True)
class MapCase:
    """One image, one class, one map kind.

    model_map: ``(N, N) float32`` in logit units, the model frame (the centre crop resized);
    crop: where that frame came from in the native image; shape: native ``(h, w)``;
    positive: the ground-truth label; truth: the native ``(h, w) bool`` region of a positive,
    or None (a negative, or a positive without localization ground truth); predicted: the
    classifier's call at its decision threshold; probability: the image probability.
    """

    label: str
    kind: str
    model_map: np.ndarray
    crop: CropBox
    shape: tuple[int, int]
    positive: bool
    truth: np.ndarray | None
    predicted: bool
    probability: float


class LocalizationProtocol(Protocol):
    """A named way of scoring saliency maps against ground-truth regions."""

    name: str
    #: The figures ``score`` returns, in table order.
    metrics: tuple[str, ...]

    def needs_tuning(self) -> bool:
        """True when ``tune`` must run (on a tuning split) before ``score``."""
        ...

    def tuning_sample(self, case: MapCase) -> Any:
        """What ``tune`` needs from one case of the tuning split (None: nothing)."""
        ...

    def tune(self, kind: str, label: str, samples: list[Any]) -> None:
        """Fix the thresholds of one (map kind, class) from its tuning samples."""
        ...

    def score(self, case: MapCase) -> dict[str, float]:
        """Each of ``metrics`` for one case, NaN where the case does not count."""
        ...

    def describe(self, steps: int, kinds: tuple[str, ...]) -> dict[str, Any]:
        """JSON-ready: definition, source, thresholds used, and deviations from the source's
        own setting (e.g. S != 64) for a run at S = ``steps`` scoring map ``kinds``."""
        ...
