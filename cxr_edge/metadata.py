"""Model metadata: the single source of truth for labels, geometry and provenance.

Written into the ONNX file at export (``metadata_props["cxr_edge"]``, one JSON object) and
read back by every runtime, so image size, patch size and labels are never repeated as
literals elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cxr_edge import __version__
from cxr_edge.errors import CxrEdgeError

METADATA_KEY = "cxr_edge"

#: CheXpert label order used by the official MedicalPatchNet checkpoints.
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

#: Numeric precisions a patch model can carry (``ModelMetadata.precision``); float32 is the export.
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")

#: Preprocessing contract of the reference: 8-bit "L", centre square crop, antialiased
#: bilinear resize to image_size, divide by 255, no mean/std.
PREPROCESSING_ID = "medicalpatchnet-v1"


@dataclass(frozen=True)
class ModelVariant:
    """Width/depth scaling of EfficientNetV2-S. ``full`` (1.0, 1.0) is the official model."""

    name: str = "full"
    width_mult: float = 1.0
    depth_mult: float = 1.0


#: Bounds on the model frame: the official model is 512 px with 64-px patches (8 x 8 grid);
#: beyond 2048 px or a 64 x 64 grid one image's patches no longer fit a cart's memory.
MAX_IMAGE_SIZE = 2048
MAX_GRID = 64


def metadata_problem(md: ModelMetadata) -> str | None:
    """What makes ``md`` unusable (labels, geometry, thresholds), or None. Checked at load."""
    import math

    if not md.labels:
        return "labels: the model has no labels"
    for label in md.labels:
        if not isinstance(label, str) or not label.strip() or not label.isprintable():
            return f"labels: {label!r} is not a printable, non-empty name"
    folded = [label.casefold() for label in md.labels]
    duplicates = sorted({label for label, f in zip(md.labels, folded) if folded.count(f) > 1})
    if duplicates:
        return f"labels: {', '.join(repr(d) for d in duplicates)} given more than once"
    for name in ("image_size", "patch_size"):
        value = getattr(md, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"{name} must be a positive integer, got {value!r}"
    if md.image_size > MAX_IMAGE_SIZE:
        return f"image_size {md.image_size} is over {MAX_IMAGE_SIZE} px"
    if md.patch_size > md.image_size or md.image_size % md.patch_size:
        return f"image_size {md.image_size} is not a multiple of patch_size {md.patch_size}"
    if md.image_size // md.patch_size > MAX_GRID:
        return (
            f"{md.image_size // md.patch_size} patches per side (image_size / patch_size) is over {MAX_GRID}"
        )
    if md.thresholds is not None:
        if len(md.thresholds) != len(md.labels):
            return f"{len(md.thresholds)} thresholds for {len(md.labels)} labels"
        for label, t in zip(md.labels, md.thresholds):
            if not isinstance(t, (int, float)) or not math.isfinite(t) or not 0.0 < t < 1.0:
                return f"threshold {t!r} for {label!r} is not a probability strictly between 0 and 1"
    return None


@dataclass(frozen=True)
class ModelMetadata:
    """Everything a runtime needs to know about a patch model.

    ``thresholds`` are per-class decision thresholds on the probability (sigmoid of the image
    logit), in label order, or None when the model carries none.
    """

    labels: tuple[str, ...] = CHEXPERT_LABELS
    image_size: int = 512
    patch_size: int = 64
    preprocessing: str = PREPROCESSING_ID
    variant: ModelVariant = field(default_factory=ModelVariant)
    checkpoint_sha256: str = ""
    package_version: str = __version__
    precision: str = "fp32"
    thresholds: tuple[float, ...] | None = None
    intended_use: str = ""
    training_data: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def grid(self) -> int:
        """Patches per image side (8 for 512 / 64)."""
        return self.image_size // self.patch_size

    @property
    def patches_per_image(self) -> int:
        return self.grid * self.grid

    def __post_init__(self) -> None:
        problem = metadata_problem(self)
        if problem:
            raise ValueError(problem)

    def label_index(self, name: str) -> int:
        """Index of the label ``name`` (exact label, case-insensitive); CxrEdgeError if unknown."""
        folded = [label.casefold() for label in self.labels]
        try:
            return folded.index(name.casefold())
        except ValueError:
            raise CxrEdgeError(
                None, f"unknown finding {name!r}; the model has: {', '.join(self.labels)}"
            ) from None

    def with_(self, **changes: Any) -> ModelMetadata:
        return replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str | Path | None = None) -> ModelMetadata:
        try:
            raw = json.loads(text)
            raw["labels"] = tuple(raw["labels"])
            raw["variant"] = ModelVariant(**raw.get("variant", {}))
            if raw.get("thresholds") is not None:
                raw["thresholds"] = tuple(float(t) for t in raw["thresholds"])
            return cls(**raw)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CxrEdgeError(source, f"invalid cxr-edge model metadata ({exc})") from None

    @classmethod
    def from_onnx(cls, path: str | Path) -> ModelMetadata:
        """Read the metadata of an ONNX file without loading its weights into a session."""
        import onnx

        path = Path(path)
        if not path.is_file():
            raise CxrEdgeError(path, "no such model file")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError and friends
            raise CxrEdgeError(path, f"not a readable ONNX model ({type(exc).__name__})") from exc
        return cls.from_props({p.key: p.value for p in model.metadata_props}, path)

    @classmethod
    def from_props(cls, props: dict[str, str], source: str | Path | None = None) -> ModelMetadata:
        if METADATA_KEY not in props:
            raise CxrEdgeError(
                source, f"ONNX model has no '{METADATA_KEY}' metadata; export it with 'cxr-edge export'"
            )
        return cls.from_json(props[METADATA_KEY], source)


def write_onnx_metadata(model: Any, metadata: ModelMetadata) -> None:
    """Set ``metadata_props["cxr_edge"]`` on an ``onnx.ModelProto`` in place (replacing any old one)."""
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = metadata.to_json()


def cleared_for_clinical_use(intended_use: str) -> bool:
    """True only when ``intended_use`` starts with "clinical use" (e.g. "Clinical use: adult
    frontal CXR triage, CE-marked ...") and does not say "not for clinical use". Anything else,
    an empty text included, is shown with a NOT FOR CLINICAL USE banner (``cxr_edge.render``)."""
    text = " ".join(intended_use.split()).casefold()
    return text.startswith("clinical use") and "not for clinical use" not in text
