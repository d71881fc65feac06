"""A structured, templated rationale: one sentence per finding, nothing generated.

Template (fixed wording, filled with numbers computed elsewhere)::

    <label>: probability <p> (threshold <t>), positive. Evidence lies mainly in the <zone> zone
    (<share>% of it); the call rests on <k> of <G*G> patches.

with the variants "negative ... <k> of <G*G> patches hold it below the threshold", "(no
decision threshold) ... <k> of <G*G> patches carry it above / keep it below probability 0.50",
"no patch pushes toward calling it (its map is nowhere above the decision logit)" and "every patch is at or above
the threshold, so no set of patches reverses the call". ``k``: ``cxr_edge.explain.decisive``
(relative to the threshold, as the decision is); the evidence and its zone: the map's positive
values (relative to logit 0, ``cxr_edge.explain.evidence``, as ``report.evidence_summary``
counts them), so a weak positive call can rest on patches whose logits are below 0. The zone:
of six zones, sides (right, left: the frame's halves) x thirds (upper, middle, lower) of each side's lung field
(``cxr_edge.explain.body``; the whole frame when none is found), the one holding the largest
share of the finding's evidence (``cxr_edge.explain.evidence``: the positive part of its map).

Sides are the patient's when the DICOM header orients the image: Patient Orientation (0020,0020)
gives the patient directions of the image's rows and columns (e.g. ``L\\F``: x runs toward the
patient's left, y toward the feet; the standard display of a frontal chest). Otherwise (PNG/JPEG,
or no usable orientation) zones are named by the image's sides, "image-left" / "image-right",
assuming standard frontal display (patient's right on the image left, head up). View Position
and (Image) Laterality are recorded in ``info`` but do not orient a frontal chest film: PA and AP
are both displayed as if facing the patient, and laterality describes paired organs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr_edge.explain.body import crop_square, lung_fields_blocks
from cxr_edge.explain.decisive import DecisivePatches, decisive_patches
from cxr_edge.explain.evidence import finding_evidence
from cxr_edge.prediction import Prediction

#: What zones are named after when the header gives no orientation.
IMAGE_SIDES_NOTE = "image left/right, assuming standard frontal display"
_THIRDS = ("upper", "middle", "lower")
#: A row belongs to a side's lung field when it holds this fraction of that side's widest row.
LUNG_ROW_FRACTION = 0.3


@dataclass(frozen=True)
class Orientation:
    """Patient directions of the model frame's axes.

    x_toward, y_toward: the patient direction ("L", "R", "H" head, "F" feet) that increasing
    column (x) and row (y) index point to; patient_sides: whether they come from the header
    (else image sides under the standard-display assumption); basis: where they come from.
    """

    x_toward: str
    y_toward: str
    patient_sides: bool
    basis: str


def orientation(info: dict[str, Any]) -> Orientation:
    """The frame's orientation from a Prediction's ``info`` (``patient_orientation``: the two
    DICOM Patient Orientation values), else the standard-display assumption."""
    values = info.get("patient_orientation")
    if isinstance(values, (list, tuple)) and len(values) == 2:
        # Oblique values ("LF") name their main direction first.
        x, y = (str(v).strip().upper()[:1] for v in values)
        if {x, y} in ({"L", "H"}, {"L", "F"}, {"R", "H"}, {"R", "F"}):
            return Orientation(x, y, True, f"DICOM Patient Orientation {values[0]}\\{values[1]}")
    return Orientation("L", "F", False, IMAGE_SIDES_NOTE)


def to_standard(array: np.ndarray, o: Orientation) -> np.ndarray:
    """View a ``(n, n)`` frame-oriented array in standard frontal display orientation (x toward
    the patient's left, y toward the feet) by transposing and flipping."""
    x, y = o.x_toward, o.y_toward
    if x in ("H", "F"):  # rotated a quarter turn: rows run left-right
        array, x, y = array.T, y, x
    if x == "R":
        array = array[:, ::-1]
    if y == "H":
        array = array[::-1, :]
    return array


def lung_row_bounds(fields: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """Top and bottom (fractions of the frame height) of the lung field in the left and right
    halves of a standard-oriented ``(B, B) bool`` lung-field grid: the rows holding at least
    ``LUNG_ROW_FRACTION`` of that half's widest row. A half without lung takes the other's
    bounds; without any lung field, the whole frame (0, 1)."""
    b = fields.shape[0]
    found: list[tuple[float, float] | None] = []
    for half in (fields[:, : b // 2], fields[:, b // 2 :]):
        profile = half.sum(axis=1)
        if profile.max() == 0:
            found.append(None)
            continue
        rows = np.flatnonzero(profile >= LUNG_ROW_FRACTION * profile.max())
        found.append((rows[0] / b, (rows[-1] + 1) / b))
    left, right = found
    fallback = left or right or (0.0, 1.0)
    return (left or fallback, right or fallback)


def zone_shares(positive: np.ndarray, fields: np.ndarray, patient_sides: bool) -> dict[str, float] | None:
    """Share of the evidence per zone, in standard orientation.

    positive: ``(N, N) float64 >= 0`` evidence; fields: ``(B, B) bool`` lung fields, both
    standard-oriented. Sides: the frame's halves (image left = patient right). Thirds: of each
    side's lung-field height (``lung_row_bounds``); evidence above the apex counts as upper,
    below the base as lower. Names: ``zone_name``. None when there is no evidence.
    """
    total = float(positive.sum())
    if not total > 0:
        return None
    n = positive.shape[0]
    y = (np.arange(n, dtype=np.float64) + 0.5) / n
    shares = {}
    for side, cols, (top, bottom) in zip(
        ("right", "left"), (slice(0, n // 2), slice(n // 2, n)), lung_row_bounds(fields)
    ):
        third = np.clip(np.floor(3.0 * (y - top) / (bottom - top)), 0, 2).astype(np.int64)
        per_row = positive[:, cols].sum(axis=1)
        for t, name in enumerate(_THIRDS):
            shares[zone_name(side, name, patient_sides)] = float(per_row[third == t].sum()) / total
    return shares


def zone_name(side: str, third: str, patient_sides: bool) -> str:
    """The patient's ``side`` named as "right lower" (patient sides) or, under the standard
    display assumption (patient's right on the image left), "image-left lower"."""
    if patient_sides:
        return f"{side} {third}"
    return f"image-{'left' if side == 'right' else 'right'} {third}"


def lung_fields(prediction: Prediction) -> np.ndarray:
    """``(BODY_GRID, BODY_GRID) bool`` lung fields of the prediction's crop, in standard
    orientation (``lung_fields_blocks`` of the crop turned by ``orientation``)."""
    o = orientation(prediction.info)
    return lung_fields_blocks(to_standard(crop_square(prediction.gray, prediction.crop), o))


def finding_zones(
    prediction: Prediction, label: str, map_kind: str = "scaled", fields: np.ndarray | None = None
) -> dict[str, float] | None:
    """``zone_shares`` of one finding: its map and the image's lung fields, both turned to
    standard orientation by the header's Patient Orientation (``orientation``). fields: the
    image's ``lung_fields`` if already computed (they depend on the image only)."""
    o = orientation(prediction.info)
    if fields is None:
        fields = lung_fields(prediction)
    positive = to_standard(finding_evidence(prediction, label, map_kind), o)
    return zone_shares(positive, fields, o.patient_sides)


@dataclass(frozen=True)
class Rationale:
    """One finding's sentence and the facts in it: ``zone`` (None: no evidence), its
    ``zone_share``, the decisive patches, and whether sides are the patient's."""

    label: str
    text: str
    zone: str | None
    zone_share: float | None
    decisive: DecisivePatches
    patient_sides: bool


def _probability(p: float) -> str:
    return f"{p:.2f}" if p >= 0.1 else f"{p:.3f}"


def rationale(
    prediction: Prediction,
    label: str,
    map_kind: str = "scaled",
    fields: np.ndarray | None = None,
    decisive: DecisivePatches | None = None,
) -> Rationale:
    """The templated sentence of one finding (module docstring); evidence from ``map_kind``.
    fields, decisive: the image's ``lung_fields`` and the finding's ``decisive_patches`` if
    already computed (``cxr_edge.explain.explanations.explain`` computes them once)."""
    finding = prediction.finding(label)
    if decisive is None:
        decisive = decisive_patches(prediction, label)
    o = orientation(prediction.info)
    shares = finding_zones(prediction, label, map_kind, fields)
    n = decisive.grid_patches
    head = f"{finding.label}: probability {_probability(finding.probability)}"
    if decisive.thresholded:
        head += f" (threshold {_probability(decisive.reference_probability)}), "
        head += "positive." if decisive.positive else "negative."
    else:
        head += " (no decision threshold)."
    zone = share = None
    if shares is None:
        where = "No patch pushes toward calling it (its map is nowhere above the decision logit)"
    else:
        zone = max(shares, key=lambda z: shares[z])
        share = shares[zone]
        subject = "Evidence for it" if (decisive.thresholded and not decisive.positive) else "Evidence"
        where = f"{subject} lies mainly in the {zone} zone ({share:.0%} of it)"
    k = decisive.count
    if k is None:
        rests = "every patch is at or above the threshold, so no set of patches reverses the call"
    elif decisive.thresholded:
        rests = (
            f"the call rests on {k} of {n} patches"
            if decisive.positive
            else f"{k} of {n} patches hold it below the threshold"
        )
    else:
        verb = "carry it above" if decisive.positive else "keep it below"
        rests = f"{k} of {n} patches {verb} probability 0.50"
    text = f"{head} {where}; {rests}."
    return Rationale(finding.label, text, zone, share, decisive, o.patient_sides)


def rationale_json(prediction: Prediction, labels: list[str], map_kind: str = "scaled") -> dict[str, Any]:
    """The report's ``rationale``: ``sides`` (where left/right come from) and ``findings``
    [{label, text, zone, zone_share}] for ``labels``."""
    fields = lung_fields(prediction)
    rationales = [rationale(prediction, label, map_kind, fields) for label in labels]
    return rationales_json(orientation(prediction.info), rationales)


def rationales_json(o: Orientation, rationales: Sequence[Rationale]) -> dict[str, Any]:
    """``rationale_json`` of rationales already computed, for a frame of orientation ``o``."""
    entries = [
        {
            "label": r.label,
            "text": r.text,
            "zone": r.zone,
            "zone_share": None if r.zone_share is None else round(r.zone_share, 4),
        }
        for r in rationales
    ]
    return {"sides": "patient" if o.patient_sides else "image", "basis": o.basis, "findings": entries}
