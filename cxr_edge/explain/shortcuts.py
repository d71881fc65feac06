"""Shortcut warnings: a finding whose evidence sits on the film's border or outside the body.

Evidence here is the finding's *standalone* evidence, the positive part of its map (above
logit 0: patches that argue for the finding on their own; ``cxr_edge.explain.evidence``), so a
marker the model keys on stands out even when a low threshold makes weak evidence everywhere
count toward the call. Two checks:

- ``border``: the share in the border band (``BORDER_FRACTION`` of the side, 23% of the area)
  is at least ``BORDER_WARNING_SHARE`` (one half: more than twice what an evenly spread map
  puts there, and most of the evidence);
- ``outside_body``: the share outside the body mask (``cxr_edge.explain.body``) is at least
  ``OUTSIDE_BODY_WARNING_SHARE`` (one quarter). Patch evidence bleeds up to one patch beyond
  a finding at the body's edge after shift averaging, so small shares are expected; a quarter
  outside means the background itself carries evidence.

Film edges, collimator shadows, text and side markers live exactly there, and a model that keys
on them has learned a shortcut. A warning is a prompt to look, not a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr_edge.explain.body import body_mask
from cxr_edge.explain.evidence import border_band, border_band_width, evidence_share, standalone_evidence
from cxr_edge.prediction import Prediction

#: Border-band share of the evidence at which a finding is flagged.
BORDER_WARNING_SHARE = 0.5
#: Outside-the-body share of the evidence at which a finding is flagged.
OUTSIDE_BODY_WARNING_SHARE = 0.25


@dataclass(frozen=True)
class ShortcutWarning:
    """One flag: ``kind`` "border" or "outside_body", the evidence ``share`` there, the
    ``limit`` it reached, the region's ``area_share`` of the frame, and a one-line ``message``."""

    label: str
    kind: str
    share: float
    limit: float
    area_share: float
    message: str


def shortcut_warnings(
    prediction: Prediction, labels: list[str], map_kind: str = "scaled", body: np.ndarray | None = None
) -> list[ShortcutWarning]:
    """Warnings for ``labels`` (in that order, border before outside_body). body: the model-frame
    ``(N, N) bool`` body mask if already computed (default: ``body_mask`` of the prediction)."""
    size = prediction.metadata.image_size
    band = border_band(size)
    if body is None:
        body = body_mask(prediction.gray, prediction.crop, size)
    outside = ~body
    found = []
    for label in labels:
        positive = standalone_evidence(prediction, label, map_kind)
        checks = (
            (
                "border",
                band,
                BORDER_WARNING_SHARE,
                f"the border band ({border_band_width(size)} px of {size})",
            ),
            ("outside_body", outside, OUTSIDE_BODY_WARNING_SHARE, "outside the body"),
        )
        for kind, region, limit, where in checks:
            share = evidence_share(positive, region)
            if share is not None and share >= limit:
                message = (
                    f"{label}: {share:.0%} of its evidence lies in {where}, "
                    f"{float(region.mean()):.0%} of the image (flagged from {limit:.0%}): possible shortcut"
                )
                found.append(ShortcutWarning(label, kind, share, limit, float(region.mean()), message))
    return found


def shortcut_json(warnings: list[ShortcutWarning]) -> list[dict[str, Any]]:
    """The report's ``shortcut_warnings``: [{label, kind, share, limit, area_share, message}]."""
    return [
        {
            "label": w.label,
            "kind": w.kind,
            "share": round(w.share, 4),
            "limit": w.limit,
            "area_share": round(w.area_share, 4),
            "message": w.message,
        }
        for w in warnings
    ]
