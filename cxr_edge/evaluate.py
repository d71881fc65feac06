"""Classification and localization metrics, and the datasets they run on.

Classification (per class): AUROC (Mann-Whitney form, ties count one half), and at a decision
threshold on the probability: sensitivity, specificity, accuracy.

Localization, as CheXlocalize does it, on saliency maps in the model frame
(``(H, W) float32``, H = W = image_size) against ground-truth masks brought into that frame:

- hit rate ("pointing game"): over ground-truth-positive images, the fraction whose map maximum
  lies inside the ground-truth region;
- mIoU: the map is thresholded into a predicted region (pixels >= ``fraction`` x the map's
  positive maximum; empty when the classifier calls the image negative or the map has no
  positive value), and IoU with the ground truth is averaged over true positives, false
  positives (prediction vs. empty truth: IoU 0) and false negatives (IoU 0); true negatives
  are left out since IoU is undefined there.

Datasets: phantoms by seed range (``phantom_cases``), and a folder with a labels CSV plus
masks or boxes (``folder_cases``), including the layout of the shared developer set
(``annotations/nih14_bbox.csv``, ``annotations/tbx11k_bbox.json``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cxr_edge.errors import CxrEdgeError
from cxr_edge.postprocess import map_peak

# ----------------------------------------------------------------------------------------
# classification metrics
# ----------------------------------------------------------------------------------------


def auroc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for 0/1 ``targets`` (both ``(N,)``).

    Equals P(score of a random positive > score of a random negative) + 0.5 P(tie), computed from
    average ranks in O(N log N). NaN when only one class is present.
    """
    y = np.asarray(targets).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"targets {y.shape} and scores {s.shape} differ in shape")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average 1-based rank over each run of equal scores
    start = 0
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    for end in [*boundaries.tolist(), s.size]:
        ranks[order[start:end]] = (start + 1 + end) / 2.0
        start = end
    rank_sum = ranks[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass(frozen=True)
class BinaryCounts:
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def sensitivity(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def specificity(self) -> float:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else float("nan")

    @property
    def accuracy(self) -> float:
        n = self.tp + self.fp + self.tn + self.fn
        return (self.tp + self.tn) / n if n else float("nan")


def binary_counts(targets: np.ndarray, probabilities: np.ndarray, threshold: float) -> BinaryCounts:
    """Confusion counts with "positive" meaning ``probability >= threshold``."""
    y = np.asarray(targets).astype(bool).ravel()
    pred = np.asarray(probabilities, dtype=np.float64).ravel() >= threshold
    return BinaryCounts(
        tp=int((y & pred).sum()),
        fp=int((~y & pred).sum()),
        tn=int((~y & ~pred).sum()),
        fn=int((y & ~pred).sum()),
    )


def youden_threshold(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 (ties: the largest such threshold).

    Returned as the midpoint between the chosen score and the next lower one, so tiny numeric
    differences between runtimes do not flip decisions on the validation cases themselves.
    """
    y = np.asarray(targets).astype(bool).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if y.all() or not y.any():
        return 0.5
    candidates = np.unique(p)[::-1]
    best, best_t = -np.inf, 0.5
    for i, t in enumerate(candidates):
        c = binary_counts(y, p, t)
        j = c.sensitivity + c.specificity - 1.0
        if j > best + 1e-12:
            lower = candidates[i + 1] if i + 1 < candidates.size else t
            best, best_t = j, float((t + lower) / 2.0)
    return best_t


# ----------------------------------------------------------------------------------------
# localization metrics
# ----------------------------------------------------------------------------------------


def map_hit(value_map: np.ndarray, truth: np.ndarray) -> bool:
    """True when the maximum of ``value_map (H, W)`` (``map_peak``) lies in ``truth (H, W) bool``."""
    return bool(truth[map_peak(value_map)])


def threshold_map(value_map: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """``(H, W) bool``: pixels >= fraction x the map's maximum; empty when the maximum is <= 0."""
    peak = float(np.max(value_map))
    if not peak > 0:
        return np.zeros(value_map.shape, bool)
    return value_map >= fraction * peak


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
    union = int(np.logical_or(a, b).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(a, b).sum()) / union


def mask_to_model_frame(mask: np.ndarray, crop: tuple[int, int, int], image_size: int) -> np.ndarray:
    """Bring an original-frame mask ``(h, w) bool`` into the model frame ``(S, S) bool``.

    ``crop`` = (top, left, side) of the centre square; the crop is area-resized and a model pixel
    belongs to the region when at least half of it is covered. Regions that would vanish
    (smaller than one model pixel) keep their most covered pixel.
    """
    top, left, side = crop
    sub = mask[top : top + side, left : left + side].astype(np.float32)
    if sub.shape != (side, side):
        padded = np.zeros((side, side), np.float32)
        padded[: sub.shape[0], : sub.shape[1]] = sub
        sub = padded
    cover = (
        sub if side == image_size else cv2.resize(sub, (image_size, image_size), interpolation=cv2.INTER_AREA)
    )
    out = cover >= 0.5
    if not out.any() and cover.max() > 0:
        out.ravel()[int(np.argmax(cover))] = True
    return out


@dataclass
class LocalizationTally:
    """Running localization metrics of one class and one map kind."""

    hits: int = 0
    pointed: int = 0  # ground-truth positive cases with a mask
    ious: list[float] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=lambda: {"tp": 0, "fp": 0, "fn": 0})

    def add(
        self,
        value_map: np.ndarray,
        truth: np.ndarray | None,
        gt_positive: bool,
        predicted: bool,
        fraction: float = 0.5,
    ) -> None:
        """One case. ``truth`` is None when the case has no localization ground truth."""
        if gt_positive and (truth is None or not truth.any()):
            return  # positive without a region: cannot be scored for localization
        if gt_positive:
            self.pointed += 1
            self.hits += map_hit(value_map, truth)  # type: ignore[arg-type]  # checked above
        if not gt_positive and not predicted:
            return  # true negative: IoU undefined
        region = threshold_map(value_map, fraction) if predicted else np.zeros(value_map.shape, bool)
        gt = truth if (gt_positive and truth is not None) else np.zeros(value_map.shape, bool)
        kind = "tp" if gt_positive and predicted else ("fp" if predicted else "fn")
        self.kinds[kind] += 1
        self.ious.append(iou(region, gt) if kind == "tp" else 0.0)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.pointed if self.pointed else float("nan")

    @property
    def miou(self) -> float:
        return float(np.mean(self.ious)) if self.ious else float("nan")


# ----------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------


@dataclass
class Case:
    """One evaluation image.

    ``image``: a path or an ``(h, w) uint8`` array; ``targets``: ``{label: 0 | 1}`` for the labels
    this case is annotated for (labels absent here are not scored); ``masks``: ``{label: (h, w)
    bool}`` in original-image pixels for positives with localization ground truth.
    """

    name: str
    image: str | Path | np.ndarray
    targets: dict[str, int]
    masks: dict[str, np.ndarray] = field(default_factory=dict)


def phantom_cases(count: int, seed: int = 0, size: int = 512, vary_shape: bool = False) -> Iterator[Case]:
    """Phantoms ``seed .. seed + count - 1`` rendered lazily (one in memory at a time)."""
    from cxr_edge.phantoms import render_phantom

    for s in range(seed, seed + count):
        p = render_phantom(s, size=size, vary_shape=vary_shape)
        masks = {k: m for k, m in p.masks.items() if p.labels[k]}
        yield Case(name=f"phantom-{s}", image=p.image, targets=dict(p.labels), masks=masks)


#: ChestX-ray14 / TBX11K finding names -> CheXpert labels (only clear correspondences).
NIH_TO_CHEXPERT: dict[str, str] = {
    "Cardiomegaly": "Cardiomegaly",
    "Nodule": "Lung Lesion",
    "Mass": "Lung Lesion",
    "Effusion": "Pleural Effusion",
    "Pneumothorax": "Pneumothorax",
    "Pneumonia": "Pneumonia",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Atelectasis": "Atelectasis",
    "Infiltrate": "Lung Opacity",
    "Infiltration": "Lung Opacity",
    "ActiveTuberculosis": "Lung Opacity",
    "ObsoletePulmonaryTuberculosis": "Lung Opacity",
    "PulmonaryTuberculosis": "Lung Opacity",
    "Tuberculosis": "Lung Opacity",
}


def _image_shape(path: Path) -> tuple[int, int]:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CxrEdgeError(path, "cannot read image to size its annotation masks")
    return int(img.shape[0]), int(img.shape[1])


def _box_mask(shape: tuple[int, int], x: float, y: float, w: float, h: float) -> np.ndarray:
    mask = np.zeros(shape, bool)
    r0, c0 = max(0, int(np.floor(y))), max(0, int(np.floor(x)))
    r1, c1 = min(shape[0], int(np.ceil(y + h))), min(shape[1], int(np.ceil(x + w)))
    mask[r0:r1, c0:c1] = True
    return mask


def _split_findings(text: str) -> list[str]:
    return [t.strip() for t in text.replace("|", ";").split(";") if t.strip()]


def folder_cases(root: str | Path, labels: Sequence[str]) -> list[Case]:
    """Cases from a folder, for the model's ``labels`` (CheXpert names).

    Accepted layouts (the first found wins):

    1. ``labels.csv`` with a ``file`` column (relative image path) and one 0/1 column per label
       (missing/blank = not annotated); optional ``masks/<stem>__<label>.png`` (non-zero =
       region) and/or ``boxes.csv`` (``file,label,x,y,w,h`` in original pixels).
    2. The shared developer set: ``MANIFEST.csv`` (``file``, ``view``, ``labels`` with
       ChestX-ray14 names joined by ``;``, ``normal``/``unknown``/``out_of_scope``) plus
       ``annotations/nih14_bbox.csv`` and ``annotations/tbx11k_bbox.json`` boxes. Only frontal
       images with known labels are used; findings map to CheXpert via ``NIH_TO_CHEXPERT``, and
       a label counts as negative where the image's label list does not mention it.
    """
    root = Path(root)
    if not root.is_dir():
        raise CxrEdgeError(root, "no such dataset folder")
    if (root / "labels.csv").is_file():
        return _generic_cases(root, labels)
    if (root / "MANIFEST.csv").is_file():
        return _manifest_cases(root, labels)
    raise CxrEdgeError(root, "no labels.csv (file,<label>...) or MANIFEST.csv in the dataset folder")


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as fh:
            return [
                {(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(fh)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CxrEdgeError(path, f"cannot read CSV ({exc})") from exc


def _generic_cases(root: Path, labels: Sequence[str]) -> list[Case]:
    rows = _read_csv(root / "labels.csv")
    if not rows or "file" not in rows[0]:
        raise CxrEdgeError(root / "labels.csv", "needs a 'file' column and one 0/1 column per label")
    boxes: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    if (root / "boxes.csv").is_file():
        for row in _read_csv(root / "boxes.csv"):
            try:
                boxes.setdefault((row["file"], row["label"]), []).append(
                    (float(row["x"]), float(row["y"]), float(row["w"]), float(row["h"]))
                )
            except (KeyError, ValueError) as exc:
                raise CxrEdgeError(root / "boxes.csv", f"bad row {row} ({exc})") from exc
    cases = []
    for row in rows:
        path = root / row["file"]
        if not path.is_file():
            raise CxrEdgeError(path, "listed in labels.csv but missing")
        targets: dict[str, int] = {}
        for label in labels:
            value = row.get(label, "")
            if value in ("", "-1", "nan"):
                continue
            try:
                targets[label] = int(float(value) > 0.5)
            except ValueError as exc:
                raise CxrEdgeError(
                    root / "labels.csv", f"{row['file']}: '{label}' is not 0/1 ({value})"
                ) from exc
        masks: dict[str, np.ndarray] = {}
        shape: tuple[int, int] | None = None
        for label in labels:
            mask_file = root / "masks" / f"{path.stem}__{label}.png"
            region = None
            if mask_file.is_file():
                m = cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE)
                if m is None:
                    raise CxrEdgeError(mask_file, "cannot read mask")
                region = m > 0
            for box in boxes.get((row["file"], label), []):
                shape = shape or _image_shape(path)
                b = _box_mask(shape, *box)
                region = b if region is None else (region | b)
            if region is not None and targets.get(label):
                masks[label] = region
        cases.append(Case(name=row["file"], image=path, targets=targets, masks=masks))
    return cases


def _manifest_cases(root: Path, labels: Sequence[str]) -> list[Case]:
    ann = root / "annotations"
    boxes: dict[str, list[tuple[str, tuple[float, float, float, float]]]] = {}
    nih = ann / "nih14_bbox.csv"
    if nih.is_file():
        for row in _read_csv(nih):
            try:
                box = (float(row["x"]), float(row["y"]), float(row["w"]), float(row["h"]))
            except (KeyError, ValueError) as exc:
                raise CxrEdgeError(nih, f"bad row {row} ({exc})") from exc
            boxes.setdefault(row["Image Index"], []).append((row["Finding Label"], box))
    tbx = ann / "tbx11k_bbox.json"
    if tbx.is_file():
        try:
            coco = json.loads(tbx.read_text())
            names = {c["id"]: c["name"] for c in coco["categories"]}
            files = {im["id"]: Path(im["file_name"]).name for im in coco["images"]}
            for a in coco.get("annotations", []):
                boxes.setdefault(files[a["image_id"]], []).append((names[a["category_id"]], tuple(a["bbox"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise CxrEdgeError(tbx, f"not a COCO box file ({exc})") from exc

    cases = []
    for row in _read_csv(root / "MANIFEST.csv"):
        if row.get("view") != "frontal" or not row.get("file", "").startswith("images/"):
            continue
        findings = _split_findings(row.get("labels", ""))
        if not findings or findings[0] in ("unknown", "out_of_scope"):
            continue
        mapped = {NIH_TO_CHEXPERT.get(f) for f in findings} - {None}
        targets = {label: int(label in mapped) for label in labels}
        path = root / row["file"]
        masks: dict[str, np.ndarray] = {}
        for finding, box in boxes.get(path.name, []):
            label = NIH_TO_CHEXPERT.get(finding)
            if label in targets:
                targets[label] = 1
                b = _box_mask(_image_shape(path), *box)
                masks[label] = masks[label] | b if label in masks else b
        cases.append(Case(name=row["file"], image=path, targets=targets, masks=masks))
    return cases


# ----------------------------------------------------------------------------------------
# the evaluation loop
# ----------------------------------------------------------------------------------------

MAP_KINDS = ("raw", "scaled")


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
