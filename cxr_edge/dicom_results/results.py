"""All DICOM results of one prediction: one Secondary Capture per overlay and one Structured
Report, built in memory and encoded as Part-10 bytes (``cxr_edge.outputs`` names and writes
them; the DICOM node spools and sends them)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_edge.dicom_results.identity import model_sha256
from cxr_edge.dicom_results.sc import build_secondary_capture
from cxr_edge.dicom_results.sr import build_structured_report
from cxr_edge.dicom_results.uids import ResultUids
from cxr_edge.errors import CxrEdgeError

if TYPE_CHECKING:
    from cxr_edge.io.budget import InputBudget
    from cxr_edge.prediction import Prediction


@dataclass(frozen=True)
class DicomResult:
    """One result object: ``kind`` "sc" or "sr", ``label`` (the overlay's finding, "" for the
    SR), its UIDs, and the Part-10 file bytes."""

    kind: str
    label: str
    sop_class_uid: str
    sop_instance_uid: str
    data: bytes


def read_source(source: str | Path | Any, budget: InputBudget | None = None) -> Any:
    """The source pydicom Dataset: given as one, or read from a DICOM file within ``budget``
    (default ``InputBudget()``; ``cxr_edge.io.budget.read_input_file``, as inputs are read).
    CxrEdgeError if the file is not DICOM, is over the budget or lacks the UIDs results must
    reference."""
    from pydicom.dataset import Dataset

    from cxr_edge.io.budget import InputBudget, read_input_file
    from cxr_edge.io.dicom import read_dataset

    if isinstance(source, Dataset):
        ds = source
        where: str | Path = "<dataset>"
    else:
        where = Path(source)
        budget = budget or InputBudget()
        ds = read_dataset(where, read_input_file(where, budget), budget)
    for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID"):
        if not str(ds.get(keyword, "") or ""):
            raise CxrEdgeError(where, f"DICOM has no {keyword}; results could not be filed in its study")
    return ds


#: Type 2 attributes of the Patient and General Study modules the results copy: a source
#: without them (old ACR-NEMA files, stripped headers) gets them empty, which means "unknown".
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


#: What the results cannot be built without; kept as they are even if a validator frowns.
_KEPT = frozenset(
    {"SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns"}
)


def _valid(element: Any) -> bool:
    """Whether a (non-sequence) element's value is valid for its VR; copying an invalid value
    (e.g. Patient's Age "62" instead of "062Y") would make the results invalid objects."""
    from pydicom import config
    from pydicom.valuerep import validate_value

    if element.VR == "SQ" or element.value is None:
        return True
    values = element.value if element.VM > 1 else [element.value]
    try:
        for value in values:
            validate_value(element.VR, value, config.RAISE)
    except (ValueError, TypeError):
        return False
    return True


def filing_header(source: Any) -> Any:
    """The source's header without its pixel data, with the type 2 attributes the results copy
    present (empty where the source has none or an invalid value) and other invalid values
    left out. The source itself is not changed."""
    from pydicom.dataset import Dataset

    header = Dataset()
    for element in source:
        if element.keyword != "PixelData" and (element.keyword in _KEPT or _valid(element)):
            header.add(element)
    for keyword in _TYPE2_COPIED:
        if keyword not in header:
            setattr(header, keyword, "")
    header.file_meta = source.file_meta
    return header


def result_uids(source: Any, prediction: Prediction, map_kind: str) -> ResultUids:
    """The deterministic UIDs of the results of ``prediction`` on ``source`` (see ``uids``)."""
    return ResultUids(
        str(source.SOPInstanceUID), model_sha256(prediction), f"steps={prediction.steps} map={map_kind}"
    )


def encode(ds: Any) -> bytes:
    """Part-10 bytes (preamble, file meta, data set) of a highdicom/pydicom Dataset."""
    from pydicom import dcmwrite

    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def build_dicom_results(
    prediction: Prediction,
    source: Any,
    overlays: Mapping[str, np.ndarray],
    map_kind: str = "scaled",
) -> list[DicomResult]:
    """The SCs (one per entry of ``overlays``: label -> (h, w, 3) uint8 RGB, in the model's
    label order) and the SR of ``prediction`` on the source dataset ``source``, encoded."""
    from cxr_edge.io.dicom import pydicom_muted

    header = filing_header(source)
    uids = result_uids(header, prediction, map_kind)
    order = {label: i for i, label in enumerate(prediction.labels)}
    unknown = [label for label in overlays if label not in order]
    if unknown:
        raise CxrEdgeError(None, f"overlays for labels the model does not have: {', '.join(unknown)}")
    results: list[DicomResult] = []
    # highdicom warns about odd header values by quoting them (names); keep those out of logs.
    with pydicom_muted():
        for label in sorted(overlays, key=order.__getitem__):
            sc = build_secondary_capture(
                header, prediction, label, overlays[label], uids, order[label] + 1, map_kind
            )
            results.append(DicomResult("sc", label, str(sc.SOPClassUID), str(sc.SOPInstanceUID), encode(sc)))
        sr = build_structured_report(header, prediction, uids, map_kind)
        results.append(DicomResult("sr", "", str(sr.SOPClassUID), str(sr.SOPInstanceUID), encode(sr)))
    return results
