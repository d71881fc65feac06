"""Every explanation of one prediction, computed once, for the report, the overlays and the
findings table to read (``explain``).

The image regions the explanations use depend on the radiograph only, not on a finding or its
map (``ImageRegions``): the body mask, in the model frame as the maps are (frame orientation,
for ``shortcuts``), and the lung fields, in standard orientation (for ``rationale``'s zones).
They are computed once per image (one block reduction of the crop when the frame is already in
standard orientation, else one per orientation, exactly as each function computes them on its
own) and can be handed on to the next prediction of the same image (a progressive run's levels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr_edge.explain.body import (
    body_and_lung_fields_blocks,
    body_mask_blocks,
    body_mask_frame,
    crop_square,
    lung_fields_blocks,
)
from cxr_edge.explain.decisive import DecisivePatches, decisive_patches
from cxr_edge.explain.rationale import (
    Orientation,
    Rationale,
    orientation,
    rationale,
    rationales_json,
    to_standard,
)
from cxr_edge.explain.shortcuts import ShortcutWarning, shortcut_warnings
from cxr_edge.prediction import Prediction
from cxr_edge.preprocess import CropBox


@dataclass(frozen=True, eq=False)
class ImageRegions:
    """The image-only regions of one prediction's crop.

    gray, crop, size: what they were computed from (``fits`` another prediction only for the
    same image array, crop and frame size); orientation: the frame's (``rationale.orientation``);
    body: ``(size, size) bool`` body mask in the model frame (frame orientation); lung_fields:
    ``(BODY_GRID, BODY_GRID) bool`` lung fields in standard orientation.
    """

    gray: np.ndarray
    crop: CropBox
    size: int
    orientation: Orientation
    body: np.ndarray
    lung_fields: np.ndarray

    def fits(self, prediction: Prediction) -> bool:
        """Whether these are the regions of ``prediction``'s image (same array, crop, frame, orientation)."""
        return (
            self.gray is prediction.gray
            and self.crop == prediction.crop
            and self.size == prediction.metadata.image_size
            and self.orientation == orientation(prediction.info)
        )


def image_regions(prediction: Prediction) -> ImageRegions:
    """The body mask and lung fields of ``prediction``'s crop (``ImageRegions``), each exactly as
    ``shortcuts.shortcut_warnings`` and ``rationale.rationale`` compute them alone."""
    o = orientation(prediction.info)
    size = prediction.metadata.image_size
    square = crop_square(prediction.gray, prediction.crop)
    standard = to_standard(square, o)
    if standard is square:  # already in standard orientation: one block reduction serves both
        body_blocks, fields = body_and_lung_fields_blocks(square)
    else:  # the body in the frame's orientation, the lung fields on the turned crop
        body_blocks, fields = body_mask_blocks(square), lung_fields_blocks(standard)
    return ImageRegions(prediction.gray, prediction.crop, size, o, body_mask_frame(body_blocks, size), fields)


@dataclass(frozen=True, eq=False)
class Explanations:
    """What ``explain`` found for one prediction: ``decisive`` patches of every finding (by
    the model's label), the ``rationales`` and shortcut ``warnings`` of the explained labels (by
    the label as given), from ``map_kind``'s map, and the image ``regions`` they used."""

    prediction: Prediction
    map_kind: str
    regions: ImageRegions
    decisive: dict[str, DecisivePatches]
    rationales: dict[str, Rationale]
    warnings: dict[str, tuple[ShortcutWarning, ...]]

    def covers(self, prediction: Prediction, labels: Sequence[str], map_kind: str) -> bool:
        """Whether these explain ``labels`` of this very ``prediction`` from ``map_kind``'s map."""
        return (
            self.prediction is prediction
            and self.map_kind == map_kind
            and all(label in self.rationales for label in labels)
        )

    def decisive_of(self, label: str) -> DecisivePatches:
        """``decisive_patches`` of any finding of the prediction."""
        return self.decisive[self.prediction.finding(label).label]

    def shortcut_warnings(self, labels: Sequence[str]) -> list[ShortcutWarning]:
        """``shortcut_warnings(prediction, labels, map_kind)`` for explained ``labels``."""
        return [w for label in labels for w in self.warnings[label]]

    def rationale_json(self, labels: Sequence[str]) -> dict[str, Any]:
        """``rationale_json(prediction, labels, map_kind)`` for explained ``labels``."""
        return rationales_json(self.regions.orientation, [self.rationales[label] for label in labels])


def explain(
    prediction: Prediction,
    labels: Sequence[str],
    map_kind: str = "scaled",
    regions: ImageRegions | None = None,
) -> Explanations:
    """Every explanation of ``prediction``: the decisive patches of each finding, and the
    rationale and shortcut warnings of ``labels`` from ``map_kind``'s map, the image regions
    computed once. regions: those of an earlier prediction of the same image, reused when they
    ``fit`` (else computed here)."""
    if regions is None or not regions.fits(prediction):
        regions = image_regions(prediction)
    decisive = {f.label: decisive_patches(prediction, f.label) for f in prediction.findings}
    rationales: dict[str, Rationale] = {}
    warnings: dict[str, tuple[ShortcutWarning, ...]] = {}
    for label in labels:
        own = decisive[prediction.finding(label).label]
        rationales[label] = rationale(prediction, label, map_kind, regions.lung_fields, own)
        warnings[label] = tuple(shortcut_warnings(prediction, [label], map_kind, body=regions.body))
    return Explanations(prediction, map_kind, regions, decisive, rationales, warnings)


def explained(
    prediction: Prediction, labels: Sequence[str], map_kind: str, explanations: Explanations | None
) -> Explanations:
    """``explanations`` when they cover ``labels`` of ``prediction`` from ``map_kind``'s map,
    else ``explain`` (reusing their image regions where they fit)."""
    if explanations is not None and explanations.covers(prediction, labels, map_kind):
        return explanations
    regions = explanations.regions if explanations is not None else None
    return explain(prediction, labels, map_kind, regions)
