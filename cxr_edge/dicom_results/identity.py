"""Who made a result, as short text for DICOM headers: the model's identity and, for a model
not cleared for clinical use (``cxr_edge.metadata.cleared_for_clinical_use``, the same test the
overlay's banner uses), "NOT FOR CLINICAL USE"."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cxr_edge.metadata import cleared_for_clinical_use

if TYPE_CHECKING:
    from cxr_edge.prediction import Prediction

#: Hex digits of the model's sha256 shown in headers (the SR carries all 64).
SHORT_HASH = 12

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"


def model_sha256(prediction: Prediction) -> str:
    """The model file's sha256 (hex), or "unknown" for a model that did not come from a file."""
    digest: Any = prediction.model.get("sha256")
    return str(digest) if digest else "unknown"


def model_label(prediction: Prediction) -> str:
    """``MedicalPatchNet <variant> <precision> <short hash>``, e.g. "MedicalPatchNet tiny fp32 3f9a2c1b4d5e"."""
    md = prediction.metadata
    return f"MedicalPatchNet {md.variant.name} {md.precision} {model_sha256(prediction)[:SHORT_HASH]}"


def series_description(prediction: Prediction, what: str) -> str:
    """Series Description (LO, at most 64 characters): what the series holds, the model's short
    identity and, unless the model is cleared for clinical use, "NOT FOR CLINICAL USE"."""
    md = prediction.metadata
    text = f"AI {what} {md.variant.name} {model_sha256(prediction)[:8]}"
    if not cleared_for_clinical_use(md.intended_use):
        text += f" {NOT_FOR_CLINICAL_USE}"
    return text[:64]
