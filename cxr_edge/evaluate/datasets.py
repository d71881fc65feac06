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
    bool}`` in original-image pixels for positives with localization ground truth (the union of
    their boxes or masks); ``unmapped``: dataset finding names the label table does not know.
    """

    name: str
    image: str | Path | np.ndarray
    targets: dict[str, int]
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    unmapped: tuple[str, ...] = ()


def phantom_cases(count: int, seed: int = 0, size: int = 512, vary_shape: bool = False) -> Iterator[Case]:
    """Phantoms ``seed .. seed + count - 1`` rendered lazily (one in memory at a time)."""
    from cxr_edge.phantoms import render_phantom

    for s in range(seed, seed + count):
        p = render_phantom(s, size=size, vary_shape=vary_shape)
        masks = {k: m for k, m in p.masks.items() if p.labels[k]}
        yield Case(name=f"phantom-{s}", image=p.image, targets=dict(p.labels), masks=masks)


#: The one table from dataset finding names to the CheXpert labels they make positive.
#:
#: Vocabularies: ChestX-ray14 (NIH, incl. its box file's "Infiltrate"), TBX11K, and the
#: diagnosis labels of pneumonia collections (covid-chestxray-dataset: "Pneumonia/Viral/
#: COVID-19"; MHH-like exports: "COVID-19;Pneumonia"). A finding also makes positive what it
#: implies in CheXpert's label hierarchy (Irvin et al. 2019): Lung Opacity is the parent of
#: Lung Lesion, Edema, Consolidation, Pneumonia and Atelectasis. An empty tuple: a known finding
#: with no CheXpert counterpart (it makes nothing positive; the image's other labels stay
#: negative). A finding missing from the table is *unmapped*: it is reported, and the image is
#: not scored for the labels it might imply (all but its mapped positives). A model label that
#: no entry names (e.g. Support Devices, Fracture for ChestX-ray14) is not annotated by these
#: datasets and is not scored at all.
DATASET_TO_CHEXPERT: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": ("Cardiomegaly",),
    "Nodule": ("Lung Lesion", "Lung Opacity"),
    "Mass": ("Lung Lesion", "Lung Opacity"),
    "Effusion": ("Pleural Effusion",),
    "Pneumothorax": ("Pneumothorax",),
    "Pneumonia": ("Pneumonia", "Lung Opacity"),
    "Consolidation": ("Consolidation", "Lung Opacity"),
    "Edema": ("Edema", "Lung Opacity"),
    "Atelectasis": ("Atelectasis", "Lung Opacity"),
    "Infiltrate": ("Lung Opacity",),
    "Infiltration": ("Lung Opacity",),
    "Pleural_Thickening": ("Pleural Other",),
    "Emphysema": (),
    "Hernia": (),
    "ActiveTuberculosis": ("Lung Opacity",),
    "ObsoletePulmonaryTuberculosis": ("Lung Opacity",),
    "PulmonaryTuberculosis": ("Lung Opacity",),
    "Tuberculosis": ("Lung Opacity",),
    "COVID-19": ("Pneumonia", "Lung Opacity"),
    "Pneumocystis": ("Pneumonia", "Lung Opacity"),
    "Streptococcus": ("Pneumonia", "Lung Opacity"),
}
#: Labels of images without findings.
NO_FINDING_NAMES = ("normal", "No Finding")
#: CheXpert labels some dataset finding names (the labels these datasets can annotate).
ANNOTATED_LABELS: frozenset[str] = frozenset(
    label for labels in DATASET_TO_CHEXPERT.values() for label in labels
)


@dataclass(frozen=True)
class MappedFindings:
    """One image's findings through ``DATASET_TO_CHEXPERT`` for a model's labels.

    targets: ``{label: 0 | 1}`` for the labels this image is scored on; unmapped: its finding
    names missing from the table.
    """

    targets: dict[str, int]
    unmapped: tuple[str, ...]


def map_findings(findings: Sequence[str], labels: Sequence[str]) -> MappedFindings:
    """Targets of the model ``labels`` for an image with dataset ``findings`` (``NO_FINDING_NAMES``
    for none). Positive: some finding maps to the label. Negative: the label is one the datasets
    annotate (``ANNOTATED_LABELS``) and every finding is in the table. Otherwise not scored."""
    names = [f for f in findings if f not in NO_FINDING_NAMES]
    unmapped = tuple(f for f in names if f not in DATASET_TO_CHEXPERT)
    positive = {label for f in names for label in DATASET_TO_CHEXPERT.get(f, ())}
    targets: dict[str, int] = {}
    for label in labels:
        if label in positive:
            targets[label] = 1
        elif label in ANNOTATED_LABELS and not unmapped:
            targets[label] = 0
    return MappedFindings(targets, unmapped)


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
       images with known labels are used; findings map to CheXpert labels through
       ``DATASET_TO_CHEXPERT`` (``map_findings``: unmapped findings are reported in
       ``EvalDataset.description``, never read as negatives).
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
        path = root / row["file"]
        image_boxes = boxes.get(path.name, [])
        # a box names a finding too (the box list is not always in the image's label list)
        mapped = map_findings([*findings, *(f for f, _ in image_boxes if f not in findings)], labels)
        targets = dict(mapped.targets)
        masks: dict[str, np.ndarray] = {}
        shape: tuple[int, int] | None = None
        for finding, box in image_boxes:
            box_labels = [label for label in DATASET_TO_CHEXPERT.get(finding, ()) if label in targets]
            if not box_labels:
                continue
            shape = shape or _image_shape(path)
            b = _box_mask(shape, *box)
            for label in box_labels:
                masks[label] = masks[label] | b if label in masks else b
        cases.append(
            Case(name=row["file"], image=path, targets=targets, masks=masks, unmapped=mapped.unmapped)
        )
    return cases


#: First seed of the demo model's validation phantoms (``tools/train_demo.py``: decision
#: thresholds were chosen there; never trained on).
VALIDATION_PHANTOM_SEED = 100_000


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
        phantom_description: dict[str, object] = {
            "kind": "phantoms",
            "count": phantoms,
            "seeds": [seed, seed + phantoms - 1],
            "size": size,
        }
        return EvalDataset(phantom_cases(phantoms, seed=seed, size=size), phantoms, phantom_description)
    assert data is not None
    cases = folder_cases(data, labels)
    if not cases:
        raise CxrEdgeError(data, "no usable images in the dataset")
    description: dict[str, object] = {"kind": "folder", "path": str(data), "count": len(cases)}
    description.update(label_report(cases, labels))
    return EvalDataset(cases, len(cases), description)


def label_report(cases: Sequence[Case], labels: Sequence[str]) -> dict[str, object]:
    """What the report says about the labels of ``cases``: per model label how many images are
    scored (and positive), labels no image is scored on, and the unmapped finding names with
    their image counts."""
    unmapped: dict[str, int] = {}
    for case in cases:
        for name in set(case.unmapped):
            unmapped[name] = unmapped.get(name, 0) + 1
    scored = {
        label: {
            "images": sum(label in c.targets for c in cases),
            "positive": sum(c.targets.get(label, 0) for c in cases),
        }
        for label in labels
    }
    return {
        "label_table": "cxr_edge.evaluate.datasets.DATASET_TO_CHEXPERT",
        "labels_scored": {k: v for k, v in scored.items() if v["images"]},
        "labels_not_annotated": [k for k, v in scored.items() if not v["images"]],
        "unmapped_findings": dict(sorted(unmapped.items())),
    }


def open_split(spec: str, labels: Sequence[str], size: int = 512) -> EvalDataset:
    """A split named on the command line: ``phantoms:N`` or ``phantoms:N:SEED`` (default seed
    100000, the demo model's validation phantoms), or a dataset folder (``folder_cases``)."""
    if spec.startswith("phantoms:"):
        parts = spec.split(":")[1:]
        try:
            count = int(parts[0])
            seed = int(parts[1]) if len(parts) > 1 else VALIDATION_PHANTOM_SEED
        except (ValueError, IndexError):
            raise CxrEdgeError(
                None, f"a phantom split is phantoms:N or phantoms:N:SEED, got {spec!r}"
            ) from None
        if len(parts) > 2:
            raise CxrEdgeError(None, f"a phantom split is phantoms:N or phantoms:N:SEED, got {spec!r}")
        return open_dataset(labels, phantoms=count, seed=seed, size=size)
    return open_dataset(labels, data=Path(spec))
