"""What ``CxrEdge.predict`` returns for one image: a plain value, nothing computed on access.

``cxr_edge.report`` (the JSON report), ``cxr_edge.render`` (overlays) and ``cxr_edge.outputs``
(result files) are functions that read a ``Prediction``; nothing here touches the disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxr_edge.metadata import ModelMetadata
from cxr_edge.postprocess import SaliencyMaps
from cxr_edge.preprocess import CropBox

#: How many findings are reported by default when the model carries no thresholds.
TOP_K_WITHOUT_THRESHOLDS = 3


@dataclass(frozen=True)
class Finding:
    """One class of the model for one image.

    ``logit``: image logit (mean of the 64 patch logits of the unshifted image);
    ``probability``: sigmoid(logit); ``threshold``: the model's decision threshold on the
    probability, or None; ``positive``: probability >= threshold, or None without threshold.
    """

    label: str
    logit: float
    probability: float
    threshold: float | None
    positive: bool | None


@dataclass(frozen=True)
class Prediction:
    """Everything ``predict`` found for one image.

    gray: (h, w) uint8, the 8-bit image the model's input was made from (original
    resolution). crop: the centre square (original pixels) resized to the model frame.
    maps: logits, probabilities and raw/scaled (C, N, N) float32 maps in the model frame.
    model: what the report says about the model (path, sha256, variant, intended use, ...).
    info: non-identifying facts from the file header. timings_ms: per-stage wall time.
    """

    findings: tuple[Finding, ...]
    maps: SaliencyMaps
    gray: np.ndarray
    crop: CropBox
    metadata: ModelMetadata
    backend: str
    model: dict[str, Any]
    image: str | None = None
    source: str = "array"
    info: dict[str, Any] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return int(self.maps.steps)

    @property
    def original_shape(self) -> tuple[int, int]:
        return (int(self.gray.shape[0]), int(self.gray.shape[1]))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(f.label for f in self.findings)

    def finding(self, label: str) -> Finding:
        """The finding named ``label`` (exact label, case-insensitive); CxrEdgeError if unknown."""
        return self.findings[self.metadata.label_index(label)]

    def reported_labels(self) -> list[str]:
        """Labels to show by default: the positives by the model's thresholds, or, when the
        model has no thresholds, the top 3 by probability (highest first)."""
        if self.metadata.thresholds is not None:
            return [f.label for f in self.findings if f.positive]
        ranked = sorted(self.findings, key=lambda f: -f.probability)
        return [f.label for f in ranked[:TOP_K_WITHOUT_THRESHOLDS]]

    def value_map(self, label: str, kind: str = "scaled") -> np.ndarray:
        """(N, N) float32 map of one finding in logit units, model frame; ``kind`` raw or scaled."""
        one: np.ndarray = self.maps.map(kind)[self.metadata.label_index(label)]
        return one


def findings_from(maps: SaliencyMaps, metadata: ModelMetadata) -> tuple[Finding, ...]:
    """One ``Finding`` per label from an image's maps and the model's thresholds."""
    findings = []
    for c, label in enumerate(metadata.labels):
        p = float(maps.probabilities[c])
        thr = None if metadata.thresholds is None else float(metadata.thresholds[c])
        findings.append(Finding(label, float(maps.logits[c]), p, thr, None if thr is None else p >= thr))
    return tuple(findings)
