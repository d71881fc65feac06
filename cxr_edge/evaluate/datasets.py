"""Evaluation datasets: phantoms by seed range (``phantom_cases``), and a folder with a labels CSV
plus masks or boxes (``folder_cases``), including the layout of the shared developer set
(``annotations/nih14_bbox.csv``, ``annotations/tbx11k_bbox.json``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cxr_edge.errors import CxrEdgeError


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


@dataclass
class EvalDataset:
    """Cases to evaluate, how many, and a JSON-ready description for the report."""

    cases: Sequence[Case] | Iterator[Case]
    count: int
    description: dict[str, object]


def open_dataset(
    labels: Sequence[str],
    phantoms: int | None = None,
    seed: int = 0,
    size: int = 512,
    data: Path | None = None,
) -> EvalDataset:
    """Exactly one of: ``phantoms`` chest phantoms (seeds ``seed ..``, ``size`` px high), or the
    labelled folder ``data`` (``folder_cases``), for a model predicting ``labels``."""
    if (phantoms is None) == (data is None):
        raise CxrEdgeError(None, "give exactly one dataset: --phantoms N or --data DIR")
    if phantoms is not None:
        from cxr_edge.phantoms import PHANTOM_LABELS

        if phantoms < 1:
            raise CxrEdgeError(None, f"--phantoms must be >= 1, got {phantoms}")
        if not set(PHANTOM_LABELS) & set(labels):
            raise CxrEdgeError(None, "the model predicts none of the phantom findings")
        description = {
            "kind": "phantoms",
            "count": phantoms,
            "seeds": [seed, seed + phantoms - 1],
            "size": size,
        }
        return EvalDataset(phantom_cases(phantoms, seed=seed, size=size), phantoms, description)
    assert data is not None
    cases = folder_cases(data, labels)
    if not cases:
        raise CxrEdgeError(data, "no usable images in the dataset")
    return EvalDataset(cases, len(cases), {"kind": "folder", "path": str(data), "count": len(cases)})
