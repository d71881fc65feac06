"""The evaluation loop: run each case once, score it per class for classification and under
every selected localization protocol, then summarise with bootstrap intervals.

One pass over the cases serves every protocol and map kind: per image the loop builds one
``MapCase`` per (class, map kind) and hands it to each protocol, collecting an images x classes
table per (protocol, map kind, figure). Protocols that tune mIoU thresholds see a separate
tuning split first (``tune_protocols``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_edge.errors import CxrEdgeError
from cxr_edge.evaluate.bootstrap import MIN_REPLICATES, Summary, bootstrap_indices, interval, summarize
from cxr_edge.evaluate.datasets import Case, EvalDataset
from cxr_edge.evaluate.maps import ImageMaps, MapSource
from cxr_edge.evaluate.metrics import (
    BinaryCounts,
    ReliabilityBin,
    auroc,
    binary_counts,
    ece_from_bins,
    reliability_bins,
)
from cxr_edge.evaluate.protocols import DEFAULT_PROTOCOL, make_protocol
from cxr_edge.evaluate.protocols.base import LocalizationProtocol, MapCase

if TYPE_CHECKING:
    from cxr_edge.pipeline import CxrEdge

#: ``source(image) -> ImageMaps``: the maps of one image (``maps.MapSource`` or a test double).
MapSourceFn = Callable[[str | Path | np.ndarray], ImageMaps]


@dataclass
class ClassResult:
    """Classification of one class: AUROC (with its bootstrap interval), counts at the decision
    threshold, expected calibration error and reliability bins; ``targets``/``probabilities``:
    the scored cases' ``(n,)`` values, in case order (for the plots)."""

    label: str
    n: int
    positives: int
    auroc: float
    auroc_interval: tuple[float, float, float]  # bootstrap (mean, lower, upper); NaN without bootstrap
    threshold: float
    counts: BinaryCounts
    ece: float
    calibration: list[ReliabilityBin]
    targets: np.ndarray
    probabilities: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        mean, lower, upper = self.auroc_interval
        return {
            "label": self.label,
            "n": self.n,
            "positives": self.positives,
            "auroc": self.auroc,
            "auroc_bootstrap": {"mean": mean, "lower": lower, "upper": upper},
            "threshold": self.threshold,
            "sensitivity": self.counts.sensitivity,
            "specificity": self.counts.specificity,
            "accuracy": self.counts.accuracy,
            "tp": self.counts.tp,
            "fp": self.counts.fp,
            "tn": self.counts.tn,
            "fn": self.counts.fn,
            "ece": self.ece,
            "calibration_bins": [
                {
                    "lower": b.lower,
                    "upper": b.upper,
                    "count": b.count,
                    "mean_probability": b.mean_probability,
                    "positive_fraction": b.positive_fraction,
                }
                for b in self.calibration
            ],
        }


@dataclass
class ProtocolResult:
    """One protocol's figures: ``figures[kind][metric] = (per-class summaries, their average)``
    over ``labels``; ``description``: the protocol's ``describe`` (definition, source,
    thresholds, deviations)."""

    protocol: str
    description: dict[str, Any]
    labels: tuple[str, ...]
    metrics: tuple[str, ...]
    figures: dict[str, dict[str, tuple[list[Summary], Summary]]]

    def to_dict(self, scored: Sequence[str]) -> dict[str, Any]:
        maps: dict[str, Any] = {}
        for kind, by_metric in self.figures.items():
            classes: dict[str, Any] = {}
            for c, label in enumerate(self.labels):
                if label in scored:
                    classes[label] = {m: by_metric[m][0][c].to_dict() for m in self.metrics}
            maps[kind] = {"classes": classes, "mean": {m: by_metric[m][1].to_dict() for m in self.metrics}}
        return {**self.description, "metrics": list(self.metrics), "maps": maps}


def _mask_for(case: Case, label: str, shape: tuple[int, int]) -> np.ndarray | None:
    mask = case.masks.get(label)
    if mask is None:
        return None
    if mask.shape != shape:
        raise CxrEdgeError(
            case.name, f"{label} mask is {mask.shape[1]}x{mask.shape[0]}, the image {shape[1]}x{shape[0]}"
        )
    return mask.astype(bool, copy=False)


def _map_cases(
    case: Case, image: ImageMaps, labels: Sequence[str], thresholds: Sequence[float], kinds: Sequence[str]
) -> Iterator[tuple[int, MapCase]]:
    """``(class index, MapCase)`` for every annotated class and map kind of one image."""
    for c, label in enumerate(labels):
        if label not in case.targets:
            continue
        positive = bool(case.targets[label])
        p = float(image.probabilities[c])
        truth = _mask_for(case, label, image.shape) if positive else None
        for kind in kinds:
            yield (
                c,
                MapCase(
                    label,
                    kind,
                    image.maps[kind][c],
                    image.crop,
                    image.shape,
                    positive,
                    truth,
                    p >= thresholds[c],
                    p,
                ),
            )


def tune_protocols(
    protocols: Sequence[LocalizationProtocol],
    cases: Sequence[Case] | Iterator[Case],
    source: MapSourceFn,
    labels: Sequence[str],
    thresholds: Sequence[float],
    kinds: Sequence[str],
    on_case: Callable[[Case], None] | None = None,
) -> int:
    """Show the tuning split to the protocols that tune, then let each fix its thresholds per
    (map kind, class). Returns how many cases were used."""
    tuning = [p for p in protocols if p.needs_tuning()]
    samples: dict[tuple[str, str, str], list[Any]] = {
        (p.name, k, label): [] for p in tuning for k in kinds for label in labels
    }
    count = 0
    for case in cases:
        image = source(case.image)
        for _, mc in _map_cases(case, image, labels, thresholds, kinds):
            for p in tuning:
                samples[(p.name, mc.kind, mc.label)].append(p.tuning_sample(mc))
        count += 1
        if on_case is not None:
            on_case(case)
    for p in tuning:
        for kind in kinds:
            for label in labels:
                p.tune(kind, label, samples[(p.name, kind, label)])
    return count


def _classification(
    labels: Sequence[str],
    thresholds: Sequence[float],
    targets: np.ndarray,
    probabilities: np.ndarray,
    indices: np.ndarray | None,
) -> list[ClassResult]:
    """Per-class results from ``(n, C)`` targets (NaN = not annotated) and probabilities."""
    results = []
    for c, label in enumerate(labels):
        valid = ~np.isnan(targets[:, c])
        y = targets[valid, c].astype(np.int64)
        p = probabilities[valid, c]
        point = auroc(y, p) if y.size else math.nan
        boot = (math.nan, math.nan, math.nan)
        if indices is not None and y.size:
            reps = []
            for idx in indices:
                sel = idx[valid[idx]]
                reps.append(auroc(targets[sel, c], probabilities[sel, c]) if sel.size else math.nan)
            boot = interval(np.array(reps))
        bins = reliability_bins(y, p)
        results.append(
            ClassResult(
                label=label,
                n=int(y.size),
                positives=int(y.sum()),
                auroc=point,
                auroc_interval=boot,
                threshold=float(thresholds[c]),
                counts=binary_counts(y, p, thresholds[c]),
                ece=ece_from_bins(bins),
                calibration=bins,
                targets=y,
                probabilities=p,
            )
        )
    return results


def evaluate_cases(
    cases: Sequence[Case] | Iterator[Case],
    source: MapSourceFn,
    labels: Sequence[str],
    thresholds: Sequence[float],
    protocols: Sequence[LocalizationProtocol],
    kinds: Sequence[str],
    replicates: int = 1000,
    seed: int = 0,
    on_case: Callable[[Case], None] | None = None,
) -> tuple[list[ClassResult], list[ProtocolResult]]:
    """Score every case once for classification and under every protocol (tuned already).

    ``source(image)`` gives the image's probabilities and maps of each of ``kinds``; ``thresholds``:
    the decision threshold per class. Classes a case has no target for are not scored on it.
    ``replicates`` bootstrap draws (0: point values only) with ``seed``.
    """
    labels = tuple(labels)
    kinds = tuple(kinds)
    thr = tuple(thresholds)
    n_classes = len(labels)
    target_rows: list[np.ndarray] = []
    prob_rows: list[np.ndarray] = []
    rows: dict[tuple[str, str, str], list[np.ndarray]] = {
        (p.name, k, m): [] for p in protocols for k in kinds for m in p.metrics
    }
    for case in cases:
        image = source(case.image)
        t_row = np.full(n_classes, np.nan)
        p_row = np.asarray(image.probabilities, np.float64).copy()
        case_rows = {key: np.full(n_classes, np.nan) for key in rows}
        for c, mc in _map_cases(case, image, labels, thr, kinds):
            t_row[c] = float(mc.positive)
            for p in protocols:
                for metric, value in p.score(mc).items():
                    case_rows[(p.name, mc.kind, metric)][c] = value
        target_rows.append(t_row)
        prob_rows.append(p_row)
        for key, row in case_rows.items():
            rows[key].append(row)
        if on_case is not None:
            on_case(case)
    if not target_rows:
        raise CxrEdgeError(None, "no cases to evaluate")
    n = len(target_rows)
    indices = bootstrap_indices(n, replicates, seed) if replicates else None
    classes = _classification(labels, thr, np.stack(target_rows), np.stack(prob_rows), indices)
    results = []
    for p in protocols:
        figures: dict[str, dict[str, tuple[list[Summary], Summary]]] = {}
        for kind in kinds:
            figures[kind] = {m: summarize(np.stack(rows[(p.name, kind, m)]), indices) for m in p.metrics}
        results.append(ProtocolResult(p.name, {}, labels, tuple(p.metrics), figures))
    return classes, results


def _json_safe(obj: Any) -> Any:
    """NaN -> None so the report is strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


@dataclass
class EvalReport:
    """What ``cxr-edge eval`` measured on one dataset, and how.

    ``dataset``: what was evaluated; ``tuning``: the split mIoU thresholds were tuned on (or
    None); ``steps``: S of the maps; ``map_kinds``: maps scored; ``thresholds_from``: where the
    decision thresholds came from; ``bootstrap``: replicates, seed and method; ``results``:
    classification per class; ``localization``: per protocol, every localization figure.
    """

    model: dict[str, Any]
    dataset: dict[str, Any]
    steps: int
    map_kinds: tuple[str, ...]
    thresholds_from: str
    seconds: float
    results: list[ClassResult]
    localization: list[ProtocolResult]
    bootstrap: dict[str, Any]
    tuning: dict[str, Any] | None = None
    plots: list[str] = field(default_factory=list)

    @property
    def scored(self) -> list[ClassResult]:
        """The classes the dataset annotates (n > 0)."""
        return [r for r in self.results if r.n]

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (strict JSON: NaN becomes null). Localization figures sit under
        their protocol's name, each with the protocol's definition, source and deviations."""
        scored = [r.label for r in self.scored]
        report = {
            "model": self.model,
            "dataset": self.dataset,
            "tuning": self.tuning,
            "steps": self.steps,
            "maps": list(self.map_kinds),
            "thresholds_from": self.thresholds_from,
            "bootstrap": self.bootstrap,
            "seconds": self.seconds,
            "classes": [r.to_dict() for r in self.scored],
            "localization": {p.protocol: p.to_dict(scored) for p in self.localization},
            "plots": self.plots,
        }
        safe: dict[str, Any] = _json_safe(report)
        return safe

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"


#: What the report says about the bootstrap (``evaluate.bootstrap``).
BOOTSTRAP_METHOD = (
    "CheXlocalize v1.0.0 eval.py: images resampled with replacement (RandomState(seed).choice, one "
    "draw per replicate, shared by all figures); per replicate the mean of the non-NaN values; "
    "mean of the replicates and the 95% interval at sorted indices int(0.025 R) - 1, int(0.975 R) - 1; "
    "'mean' rows average the per-class figures"
)


def evaluate_model(
    edge: CxrEdge,
    dataset: EvalDataset,
    steps: int,
    protocols: Sequence[str] = (DEFAULT_PROTOCOL,),
    map_kinds: Sequence[str] = ("raw", "scaled"),
    threshold_rule: str | float | None = None,
    fraction: float = 0.5,
    tune_on: EvalDataset | None = None,
    replicates: int = 1000,
    seed: int = 0,
    on_case: Callable[[Case], None] | None = None,
    on_tune_case: Callable[[Case], None] | None = None,
) -> EvalReport:
    """Evaluate ``edge`` on ``dataset`` with S = ``steps`` maps of ``map_kinds`` under the named
    ``protocols`` (``protocols.make_protocol``; ``threshold_rule``: the mIoU binarisation of the
    CheXlocalize-style protocols, None = each one's own). Protocols that tune thresholds need
    ``tune_on`` (a split disjoint from ``dataset``). ``replicates`` bootstrap draws with ``seed``."""
    if not 0.0 < fraction <= 1.0:
        raise CxrEdgeError(None, f"the mIoU fraction must be in (0, 1], got {fraction}")
    if replicates and replicates < MIN_REPLICATES:
        raise CxrEdgeError(None, f"--bootstrap must be 0 or >= {MIN_REPLICATES}, got {replicates}")
    chosen = [make_protocol(name, threshold_rule, fraction) for name in protocols]
    needs = [p.name for p in chosen if p.needs_tuning()]
    if needs and tune_on is None:
        raise CxrEdgeError(
            None,
            f"{', '.join(needs)} tunes mIoU thresholds on a validation split: give --tune-on "
            "(or --iou-threshold otsu|NUMBER)",
        )
    md = edge.metadata
    thresholds = md.thresholds if md.thresholds is not None else (0.5,) * md.num_classes
    source = MapSource(edge, steps, map_kinds)
    t0 = time.perf_counter()
    tuning = None
    if needs and tune_on is not None:
        used = tune_protocols(chosen, tune_on.cases, source, md.labels, thresholds, map_kinds, on_tune_case)
        tuning = {**tune_on.description, "used_cases": used, "protocols": needs}
    classes, localization = evaluate_cases(
        dataset.cases, source, md.labels, thresholds, chosen, map_kinds, replicates, seed, on_case
    )
    for p, result in zip(chosen, localization):
        result.description = p.describe(steps, tuple(map_kinds))
    return EvalReport(
        model=edge.model_info,
        dataset=dataset.description,
        steps=steps,
        map_kinds=tuple(map_kinds),
        thresholds_from="model metadata" if md.thresholds is not None else "default 0.5",
        seconds=time.perf_counter() - t0,
        results=classes,
        localization=localization,
        bootstrap={"replicates": replicates, "seed": seed, "confidence": 0.95, "method": BOOTSTRAP_METHOD},
        tuning=tuning,
    )
