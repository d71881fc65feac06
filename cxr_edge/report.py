"""The JSON report of one prediction: what was run on which image, and what was found.

Schema (all numbers plain JSON): ``image`` (path or null), ``source``, ``original_shape``
[h, w], ``crop`` {top, left, side} (original pixels), ``model`` {path, sha256, variant,
precision, labels, intended_use, ...}, ``steps``, ``map`` ("raw" | "scaled"), ``findings``
[{label, logit, probability, threshold, positive}] in the model's label order, ``reported``
(labels shown by default), ``evidence`` (where the map of each reported finding puts its
evidence, see ``evidence_summary``), ``backend``, ``timings_ms`` {stage: ms}, ``info``
(non-identifying facts from the file header); ``overlays`` (file names) when result files were
written (``cxr_edge.outputs``).

Explanations (``cxr_edge.explain``): each finding carries ``decisive_patches`` {count, patches
[[row, col], ...], share, call, reference, reference_probability, reverses}; ``rationale``
{sides, basis, findings [{label, text, zone, zone_share}]} and ``shortcut_warnings`` [{label,
kind, share, limit, area_share, message}] cover the reported findings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from cxr_edge.explain.decisive import decisive_json
from cxr_edge.explain.evidence import border_band, evidence_share, standalone_evidence
from cxr_edge.explain.explanations import Explanations, explained
from cxr_edge.explain.shortcuts import shortcut_json
from cxr_edge.postprocess import map_peak
from cxr_edge.prediction import Prediction

REPORT_VERSION = 1

__all__ = ["build_report", "evidence_summary", "report_json"]


def _number(x: float) -> float | None:
    """JSON has no NaN/inf: report them as null rather than writing invalid JSON."""
    x = float(x)
    return x if math.isfinite(x) else None


def _plain(value: Any) -> Any:
    """Make header facts JSON-safe (numpy scalars, tuples, bytes)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _number(value)
    if hasattr(value, "item"):
        return _plain(value.item())
    return str(value)


def evidence_summary(prediction: Prediction, label: str, map_kind: str = "scaled") -> dict[str, Any]:
    """Where one finding's map puts its evidence, as facts (no interpretation).

    ``peak``: the strongest evidence for the finding (map maximum), at ``x``, ``y`` in
    original-image pixels, ``value`` in logit units. ``border_share``: fraction of the
    finding's standalone evidence (``explain.evidence.standalone_evidence``: the map's part
    above logit 0, what the shortcut warnings weigh) inside the border band of width ``explain.evidence.BORDER_FRACTION`` of the side; ``border_area_share``: that band's share of the area,
    the value an evenly spread map would give. ``peak_in_border``: the peak lies in the band.
    """
    m = prediction.value_map(label, map_kind)
    n = m.shape[0]
    band = border_band(n)
    row, col = map_peak(m)
    share = evidence_share(standalone_evidence(prediction, label, map_kind), band)
    crop = prediction.crop
    scale = crop.side / n
    return {
        "label": label,
        "map": map_kind,
        "peak": {
            "x": round(crop.left + (col + 0.5) * scale - 0.5, 1),
            "y": round(crop.top + (row + 0.5) * scale - 0.5, 1),
            "value": _number(m[row, col]),
        },
        "peak_in_border": bool(band[row, col]),
        "border_share": None if share is None else _number(share),
        "border_area_share": round(float(band.mean()), 4),
    }


def build_report(
    prediction: Prediction,
    map_kind: str = "scaled",
    overlays: Sequence[str] | None = None,
    extra_timings_ms: dict[str, float] | None = None,
    explanations: Explanations | None = None,
) -> dict[str, Any]:
    """The report dict of one prediction (JSON-ready, see the module docstring).

    overlays: names of the overlay files written for it (None: no files were written);
    extra_timings_ms: stages outside ``predict`` (e.g. ``render``), added to ``timings_ms``;
    explanations: ``explain.explanations.explain`` of the prediction if already computed
    (used when they cover the reported labels from ``map_kind``'s map).
    """
    p = prediction
    crop = p.crop
    timings = {**p.timings_ms, **(extra_timings_ms or {})}
    reported = p.reported_labels()
    ex = explained(p, reported, map_kind, explanations)
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "image": p.image,
        "source": p.source,
        "original_shape": list(p.original_shape),
        "crop": {"top": int(crop.top), "left": int(crop.left), "side": int(crop.side)},
        "model": _plain(p.model),
        "steps": p.steps,
        "map": map_kind,
        "findings": [
            {
                "label": f.label,
                "logit": _number(f.logit),
                "probability": _number(f.probability),
                "threshold": None if f.threshold is None else _number(f.threshold),
                "positive": f.positive,
                "decisive_patches": decisive_json(ex.decisive_of(f.label)),
            }
            for f in p.findings
        ],
        "reported": reported,
        "evidence": [evidence_summary(p, label, map_kind) for label in reported],
        "rationale": ex.rationale_json(reported),
        "shortcut_warnings": shortcut_json(ex.shortcut_warnings(reported)),
        "backend": p.backend,
        "timings_ms": {k: round(float(v), 3) for k, v in timings.items()},
        "info": _plain(p.info),
    }
    if overlays is not None:
        report["overlays"] = list(overlays)
    return report


def report_json(report: dict[str, Any] | list[dict[str, Any]]) -> str:
    """Serialise one report or a list of them (strict JSON: no NaN)."""
    return json.dumps(report, indent=2, allow_nan=False) + "\n"
