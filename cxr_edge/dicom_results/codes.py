"""Coded concepts for the DICOM results: one concept per model label, and the few concepts the
Structured Report's measurements and evaluations are named with.

Every code here is taken from a published source (docs/dicom.md has the table with the sources):
DICOM PS3.16 context groups (as shipped in ``pydicom.sr.codedict``, generated from the standard;
tests check each such code against it), SNOMED International's own documentation, or public SNOMED
CT mappings. Labels without a standard concept that means the same thing get a code in the
private coding scheme ``99CXREDGE`` (DICOM PS3.16 8.2: designators beginning with "99" are
private), plus a standard finding site where one applies, so nothing is invented in SNOMED CT's name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pydicom.sr.codedict import codes as dicom_codes
from pydicom.sr.coding import Code

#: Private coding scheme for labels without a standard concept of the same meaning.
LOCAL_SCHEME = "99CXREDGE"
LOCAL_SCHEME_NAME = "cxr-edge label codes"

# -- anatomy (DICOM CID 6100 "Chest Component Category") --------------------------------------
LUNG = dicom_codes.SCT.Lung
MEDIASTINUM = dicom_codes.SCT.Mediastinum
PLEURA = dicom_codes.SCT.PleuralStructure

# -- presence (DICOM CID 240 "Present-Absent") -----------------------------------------------
PRESENT = dicom_codes.SCT.Present
ABSENT = dicom_codes.SCT.Absent

# -- measurement names and units -------------------------------------------------------------
#: DICOM code 122157 "Probability" (PS3.16 Annex D): the model's sigmoid output in [0, 1].
PROBABILITY = dicom_codes.DCM.Probability
#: DICOM code 122411 "Threshold Value": the model's decision threshold on the probability.
THRESHOLD = dicom_codes.DCM.ThresholdValue
#: DICOM code 130404 "Saliency" (CID 7180): the map's value at the evidence peak.
SALIENCY = dicom_codes.DCM.Saliency
#: UCUM "1" (CID 7181): dimensionless.
NO_UNITS = dicom_codes.UCUM.NoUnits
#: UCUM annotation unit: the maps are in logit units (a patch's share of the image logit).
LOGIT = Code("{logit}", "UCUM", "logit")
#: The procedure the report is about (DICOM CID 100, LOINC): a radiograph.
PROCEDURE_XR = dicom_codes.LN.XRUnspecifiedBodyRegion

# -- references and observers ----------------------------------------------------------------
#: DICOM code 121322 (CID 7202): why the overlay references its source image.
SOURCE_IMAGE_PURPOSE = dicom_codes.DCM.SourceImageForImageProcessingOperation
#: DICOM code 121007 "Device" (CID 270): the report's observer type.
DEVICE = dicom_codes.DCM.Device


@dataclass(frozen=True)
class LabelConcept:
    """How one model label is coded: ``concept`` names the finding, ``site`` (optional) says
    where it is, for labels whose concept does not say it by itself (e.g. "Lung Opacity" =
    Opacity in the Lung)."""

    concept: Code
    site: Code | None = None


def _local(value: str, meaning: str) -> Code:
    return Code(value, LOCAL_SCHEME, meaning)


#: CheXpert labels (cxr_edge.metadata.CHEXPERT_LABELS) -> concepts. Sources: docs/dicom.md.
LABEL_CONCEPTS: dict[str, LabelConcept] = {
    "No Finding": LabelConcept(Code("17621005", "SCT", "Normal")),
    "Enlarged Cardiomediastinum": LabelConcept(
        _local("ENL-CARDIOMED", "Enlarged cardiomediastinum"), MEDIASTINUM
    ),
    "Cardiomegaly": LabelConcept(Code("8186001", "SCT", "Cardiomegaly")),
    "Lung Opacity": LabelConcept(Code("112001", "DCM", "Opacity"), LUNG),
    "Lung Lesion": LabelConcept(Code("52988006", "SCT", "Lesion"), LUNG),
    "Edema": LabelConcept(Code("19242006", "SCT", "Pulmonary edema")),
    "Consolidation": LabelConcept(Code("95436008", "SCT", "Lung consolidation")),
    "Pneumonia": LabelConcept(Code("233604007", "SCT", "Pneumonia")),
    "Atelectasis": LabelConcept(Code("46621007", "SCT", "Atelectasis")),
    "Pneumothorax": LabelConcept(Code("36118008", "SCT", "Pneumothorax")),
    "Pleural Effusion": LabelConcept(Code("60046008", "SCT", "Pleural effusion")),
    "Pleural Other": LabelConcept(_local("PLEURAL-OTHER", "Other pleural finding"), PLEURA),
    "Fracture": LabelConcept(Code("125605004", "SCT", "Fracture of bone")),
    "Support Devices": LabelConcept(Code("49062001", "SCT", "Device")),
}


def label_concept(label: str) -> LabelConcept:
    """The concept of a model label; a label the table does not know (a model trained on other
    classes) gets a private code ``L-<12 hex of its sha256>`` whose meaning is the label itself
    (its first 64 characters)."""
    known = LABEL_CONCEPTS.get(label)
    if known is not None:
        return known
    # Code Value is SH (16 characters): a stable digest of the label, not a truncation that
    # two long labels could share.
    digest = hashlib.sha256(label.encode()).hexdigest()[:12].upper()
    return LabelConcept(_local(f"L-{digest}", label[:64]))


def uses_local_scheme(labels: tuple[str, ...]) -> bool:
    """True when any of these labels is coded in the private scheme (the SR then declares it)."""
    return any(label_concept(label).concept.scheme_designator == LOCAL_SCHEME for label in labels)
