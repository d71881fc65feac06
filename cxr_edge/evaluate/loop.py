"""The evaluation loop: run each case through a predictor and score it per class."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_edge.errors import CxrEdgeError
from cxr_edge.evaluate.datasets import Case
from cxr_edge.evaluate.metrics import (
    BinaryCounts,
    LocalizationTally,
    auroc,
    binary_counts,
    mask_to_model_frame,
)
from cxr_edge.postprocess import MAP_KINDS, check_map_kind

if TYPE_CHECKING:
    from cxr_edge.pipeline import CxrEdge


@dataclass
class ClassResult:
    """Per-class results; localization keyed by map kind ("raw"/"scaled")."""

    label: str
    n: int
    positives: int
    auroc: float
    threshold: float
    counts: BinaryCounts
    localization: dict[str, LocalizationTally]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "n": self.n,
            "positives": self.positives,
            "auroc": self.auroc,
            "threshold": self.threshold,
            "sensitivity": self.counts.sensitivity,
            "specificity": self.counts.specificity,
            "accuracy": self.counts.accuracy,
            "tp": self.counts.tp,
            "fp": self.counts.fp,
            "tn": self.counts.tn,
            "fn": self.counts.fn,
            "localization": {
                kind: {
                    "hit_rate": t.hit_rate,
                    "hits": t.hits,
                    "pointed": t.pointed,
                    "miou": t.miou,
                    "iou_cases": dict(t.kinds),
                }
                for kind, t in self.localization.items()
            },
        }


def evaluate_cases(
    cases: Sequence[Case] | Iterator[Case],
    predict: Callable[[str | Path | np.ndarray], object],
    labels: Sequence[str],
    thresholds: Sequence[float] | None,
    image_size: int,
    map_kinds: Sequence[str] = MAP_KINDS,
    fraction: float = 0.5,
    on_case: Callable[[Case], None] | None = None,
) -> list[ClassResult]:
    """Run ``predict`` on each case and score it.

    ``predict(image)`` returns a Prediction-like object with ``.maps`` (SaliencyMaps: ``labels``,
    ``probabilities (C,)``, ``raw``/``scaled (C, H, W)``) and ``.crop`` (``top, left, side``).
    Classes of the model not in a case's targets are not scored for that case. Thresholds
    default to 0.5 when the model carries none.
    """
    labels = tuple(labels)
    thr = tuple(thresholds) if thresholds is not None else (0.5,) * len(labels)
    scores: dict[str, list[float]] = {lab: [] for lab in labels}
    truth: dict[str, list[int]] = {lab: [] for lab in labels}
    tallies = {lab: {k: LocalizationTally() for k in map_kinds} for lab in labels}
    for case in cases:
        pred = predict(case.image)
        maps = pred.maps  # type: ignore[attr-defined]
        crop = pred.crop  # type: ignore[attr-defined]
        box = (int(crop.top), int(crop.left), int(crop.side))
        for c, lab in enumerate(labels):
            if lab not in case.targets:
                continue
            y = int(case.targets[lab])
            p = float(maps.probabilities[c])
            scores[lab].append(p)
            truth[lab].append(y)
            gt = case.masks.get(lab)
            gt_model = mask_to_model_frame(gt, box, image_size) if (y and gt is not None) else None
            for kind in map_kinds:
                tallies[lab][kind].add(getattr(maps, kind)[c], gt_model, bool(y), p >= thr[c], fraction)
        if on_case is not None:
            on_case(case)
    results = []
    for c, lab in enumerate(labels):
        targets = np.array(truth[lab], dtype=np.int64)
        probs = np.array(scores[lab], dtype=np.float64)
        results.append(
            ClassResult(
                label=lab,
                n=int(targets.size),
                positives=int(targets.sum()),
                auroc=auroc(targets, probs) if targets.size else float("nan"),
                threshold=float(thr[c]),
                counts=binary_counts(targets, probs, thr[c]),
                localization=tallies[lab],
            )
        )
    return results


def _json_safe(obj: Any) -> Any:
    """NaN -> None so the report is strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


@dataclass
class EvalReport:
    """What ``cxr-edge eval`` measured: per-class results on one dataset, and how.

    ``dataset``: what was evaluated (kind, count, seeds or path); ``steps``: S of the maps;
    ``map_kinds``: maps scored; ``fraction``: the mIoU region threshold (fraction of the map's
    maximum); ``thresholds_from``: where the decision thresholds came from; ``seconds``: wall time.
    """

    model: dict[str, Any]
    dataset: dict[str, Any]
    steps: int
    map_kinds: tuple[str, ...]
    fraction: float
    thresholds_from: str
    seconds: float
    results: list[ClassResult]

    @property
    def scored(self) -> list[ClassResult]:
        """The classes the dataset annotates (n > 0)."""
        return [r for r in self.results if r.n]

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (strict JSON: NaN becomes null)."""
        report = {
            "model": self.model,
            "dataset": self.dataset,
            "steps": self.steps,
            "maps": list(self.map_kinds),
            "iou_threshold_fraction": self.fraction,
            "thresholds_from": self.thresholds_from,
            "seconds": self.seconds,
            "classes": [r.to_dict() for r in self.scored],
        }
        safe: dict[str, Any] = _json_safe(report)
        return safe

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"


def evaluate_model(
    edge: CxrEdge,
    cases: Sequence[Case] | Iterator[Case],
    dataset: dict[str, Any],
    steps: int,
    map_kinds: Sequence[str] = MAP_KINDS,
    fraction: float = 0.5,
    on_case: Callable[[Case], None] | None = None,
) -> EvalReport:
    """Evaluate ``edge`` on ``cases`` with S = ``steps`` maps; ``dataset`` describes the cases."""
    for kind in map_kinds:
        check_map_kind(kind)
    if not 0.0 < fraction <= 1.0:
        raise CxrEdgeError(None, f"the mIoU fraction must be in (0, 1], got {fraction}")
    md = edge.metadata
    t0 = time.perf_counter()
    results = evaluate_cases(
        cases,
        lambda image: edge.predict(image, steps=steps),
        md.labels,
        md.thresholds,
        md.image_size,
        map_kinds=map_kinds,
        fraction=fraction,
        on_case=on_case,
    )
    return EvalReport(
        model=edge.model_info,
        dataset=dataset,
        steps=steps,
        map_kinds=tuple(map_kinds),
        fraction=fraction,
        thresholds_from="model metadata" if md.thresholds is not None else "default 0.5",
        seconds=time.perf_counter() - t0,
        results=results,
    )
