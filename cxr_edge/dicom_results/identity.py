"""Who made a result: the model's identity as short text for DICOM headers, and whether the
model declares itself not for clinical use."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr_edge.prediction import Prediction

#: Phrases by which a model's ``intended_use`` says it is not for patient care.
_NOT_CLINICAL = re.compile(
    r"not\s+(intended\s+)?for\s+clinical|not\s+a\s+medical\s+device|research\s+use\s+only|"
    r"for\s+research\s+only|investigational",
    re.IGNORECASE,
)

#: Hex digits of the model's sha256 shown in headers (the SR carries all 64).
SHORT_HASH = 12

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"


def says_not_clinical(intended_use: str) -> bool:
    """True when the model's intended-use text says it is not for clinical use."""
    return bool(_NOT_CLINICAL.search(intended_use or ""))


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
    identity and, for a model that says so, "NOT FOR CLINICAL USE"."""
    md = prediction.metadata
    text = f"AI {what} {md.variant.name} {model_sha256(prediction)[:8]}"
    if says_not_clinical(md.intended_use):
        text += f" {NOT_FOR_CLINICAL_USE}"
    return text[:64]
