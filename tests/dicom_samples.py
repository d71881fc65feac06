"""Small DICOM inputs built in tests: the bundled sample phantom as a CR image (so the DICOM
results tests run without ../shared), and copies of real images under new SOP Instance UIDs."""

from __future__ import annotations

import copy
import importlib.util
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from ci_tools import require


def require_dicom_stack() -> None:
    for package in ("highdicom", "pynetdicom"):
        require(f"{package} (pip install '.[dicom]')", importlib.util.find_spec(package) is not None)


def has_tool(name: str) -> bool:
    return shutil.which(name) is not None


#: A made-up patient, so tests can check that patient attributes are copied, not invented.
PATIENT = {
    "PatientName": "Phantom^Sample",
    "PatientID": "PHANTOM-001",
    "PatientBirthDate": "19700101",
    "PatientSex": "O",
}


def synthetic_cr(image: np.ndarray, **overrides: Any) -> Any:
    """A Computed Radiography image (MONOCHROME2, 8 bit) holding ``image`` (h, w) uint8, with a
    patient, a study, frontal chest header attributes; ``overrides`` replace any attribute."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from pynetdicom.sop_class import ComputedRadiographyImageStorage  # type: ignore[attr-defined]

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240102", "101500", "ACC-7", "S-7"
    ds.ReferringPhysicianName = "Doe^Jane"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.PatientOrientation = ["L", "F"]
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    for key, value in overrides.items():
        setattr(ds, key, value)
    return ds


def write_part10(ds: Any, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def with_new_instance_uid(ds: Any) -> Any:
    """A copy of ``ds`` that is another instance of the same study (new SOP Instance UID)."""
    from pydicom.uid import generate_uid

    twin = copy.deepcopy(ds)
    twin.SOPInstanceUID = generate_uid()
    if "MediaStorageSOPInstanceUID" in twin.file_meta:
        twin.file_meta.MediaStorageSOPInstanceUID = twin.SOPInstanceUID
    return twin
