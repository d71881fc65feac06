"""Is a DICOM a frontal chest radiograph, as far as its header says?

The model is trained on frontal chest X-rays only. We refuse a file only where the header
positively says otherwise; absent attributes (old ACR-NEMA files, anonymised headers) pass.
Only anatomy, modality and view are looked at, never patient attributes.
"""

from __future__ import annotations

import re
from typing import Any

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
#: ViewPosition values that are not frontal: lateral and oblique projections.
NON_FRONTAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLO", "RLO", "OBLIQUE"})
_CHEST_WORDS = re.compile(r"CHEST|THORA|LUNG|CXR|PULMO|TORAX", re.IGNORECASE)
#: Anatomy words that, in a description, say the image is not of the chest.
_OTHER_ANATOMY = re.compile(
    r"\b(TEETH|TOOTH|DENTAL|PANORAMIC|PANO|SKULL|HEAD|BRAIN|SINUS|KNEE|HAND|FINGER|WRIST|ELBOW|"
    r"SHOULDER|HUMERUS|FOREARM|FOOT|ANKLE|TIBIA|FIBULA|FEMUR|HIP|PELVIS|SPINE|LUMBAR|CERVICAL|"
    r"ABDOMEN|MAMMO\w*|BREAST|EXTREMITY)\b",
    re.IGNORECASE,
)
_DESCRIPTION_KEYWORDS = ("StudyDescription", "SeriesDescription", "ProtocolName")


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def scope_problem(ds: Any) -> str | None:
    """Why the header says this is not a frontal chest radiograph, or None when it does not.

    Checks, in order: Modality not CR/DX; BodyPartExamined present and not the chest; when the
    body part is absent, a study/series/protocol description naming other anatomy and no chest
    word; ViewPosition lateral or oblique. The message quotes only those coded values.
    """
    modality = _text(ds, "Modality").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        return f"not a radiograph: Modality is {modality} (expected CR or DX)"
    body_part = _text(ds, "BodyPartExamined")
    if body_part and not _CHEST_WORDS.search(body_part):
        return f"not a chest image: BodyPartExamined is {body_part.upper()}"
    if not body_part:
        descriptions = " ".join(_text(ds, k) for k in _DESCRIPTION_KEYWORDS)
        other = _OTHER_ANATOMY.search(descriptions)
        if other and not _CHEST_WORDS.search(descriptions):
            return f"not a chest image: the description names {other.group(0).upper()}"
    view = _text(ds, "ViewPosition").upper()
    if view in NON_FRONTAL_VIEWS:
        return f"not a frontal view: ViewPosition is {view}"
    return None


def header_scope(ds: Any, problem: str | None) -> str:
    """ "header" when the header positively says frontal chest radiograph (Modality CR/DX, a
    chest BodyPartExamined, no lateral/oblique view), else "unverified" (silent header).
    problem: ``scope_problem(ds)``, which the caller has already asked."""
    modality = _text(ds, "Modality").upper()
    body_part = _text(ds, "BodyPartExamined")
    if modality in RADIOGRAPH_MODALITIES and _CHEST_WORDS.search(body_part) and problem is None:
        return "header"
    return "unverified"
