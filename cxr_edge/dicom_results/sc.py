"""A Secondary Capture of one overlay, filed in the source image's study.

highdicom's ``SCImage.from_ref_dataset`` copies the Patient and General Study modules from the
source and writes the SC Equipment, SC Image and Image Pixel modules; highdicom's
``ReferencedImageSequence`` references the source image. The attributes highdicom has no
parameter for are set by keyword: Burned In Annotation (YES: the overlay's banner and legend
strips carry the model identity, the call and, for a model not cleared for clinical use, that
statement, as pixels), the Source Image Sequence (purpose: source image for an image processing
operation), Derivation Description, and, when the source has no usable Patient Orientation or
Laterality, empty ones (type 2: unknown). The pixels are ``cxr_edge.render.finding_overlay``'s
frame: the X-ray at its own resolution and orientation between a banner strip and a legend
strip, so as wide as the source and taller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_edge.dicom_results import codes
from cxr_edge.dicom_results.identity import model_label, series_description
from cxr_edge.dicom_results.uids import ResultUids
from cxr_edge.errors import CxrEdgeError

if TYPE_CHECKING:
    from cxr_edge.prediction import Prediction

#: Series Number of the overlay series (the report's is the next one).
OVERLAY_SERIES_NUMBER = 9901
MANUFACTURER = "cxr-edge"


def _patient_orientation(source: Any) -> tuple[str, str] | None:
    """The source's Patient Orientation when it has the two values highdicom accepts."""
    from highdicom.enum import PatientOrientationValuesBiped

    value = source.get("PatientOrientation")
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    try:
        row, col = (PatientOrientationValuesBiped(str(v)).value for v in value)
    except ValueError:
        return None
    return (row, col)


def build_secondary_capture(
    source: Any,
    prediction: Prediction,
    label: str,
    rgb: np.ndarray,
    uids: ResultUids,
    instance_number: int,
    map_kind: str = "scaled",
) -> Any:
    """The SC (a ``highdicom.sc.SCImage``) of ``label``'s overlay ``rgb`` ((H, W, 3) uint8 RGB,
    ``cxr_edge.render.finding_overlay``) for the source dataset ``source``; ``map_kind``: the map
    the overlay shows ("raw" or "scaled")."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    from cxr_edge import __version__

    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise CxrEdgeError(
            None, f"overlay of {label!r} must be (h, w, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}"
        )
    orientation = _patient_orientation(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=uids.overlay_series,
        series_number=OVERLAY_SERIES_NUMBER,
        sop_instance_uid=uids.overlay_instance(label),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        # A placeholder when the source has none; replaced by "unknown" below.
        patient_orientation=orientation or ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description(prediction, "overlays"),
        manufacturer_model_name=model_label(prediction)[:64],
        software_versions=f"cxr-edge {__version__}",
    )
    if orientation is None:
        del sc.PatientOrientation  # the placeholder; type 2, so present and empty = unknown
        sc.add_new("PatientOrientation", "CS", None)
    if "Laterality" not in sc:
        sc.Laterality = ""  # type 2C: a chest is not a paired part, so "unknown" is right
    sc.BurnedInAnnotation = "YES"
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(codes.SOURCE_IMAGE_PURPOSE)]
    sc.SourceImageSequence = [item]
    sc.ReferencedImageSequence = hd.content.ReferencedImageSequence([source])
    sc.DerivationDescription = (
        f"Overlay of the {map_kind} {label} saliency map, {prediction.steps} steps per patch"[:1024]
    )
    return sc
