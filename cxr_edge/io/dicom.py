"""DICOM radiographs -> the 8-bit display image a reader would see (the reference's "L" image).

Order of operations (DICOM PS3.4 grayscale pipeline): stored values -> Modality LUT / rescale
slope+intercept -> VOI (VOI LUT Sequence if present, else the first Window Center/Width with
its VOI LUT Function) -> [0, 255] -> MONOCHROME1 inverted (high values are dark). Without any
VOI in the header, 8-bit data are taken as they are and deeper data are stretched min..max.
Compressed transfer syntaxes (JPEG, JPEG lossless, JPEG 2000) decode through the pylibjpeg
plugins. Files without file meta (ACR-NEMA) are read with ``force=True``.

Nothing identifying ever leaves this module: ``info`` holds only technical facts, and errors
quote no header value except modality/anatomy/view codes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cxr_edge.errors import CxrEdgeError
from cxr_edge.io.gray import pil_luma
from cxr_edge.io.scope import scope_problem

_quiet = threading.local()


class _MuteOwnReads(logging.Filter):
    """Drops pydicom/highdicom log records emitted while this thread is inside :func:`pydicom_muted`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "active", False)


# highdicom (building results) quotes header values in its log lines and warnings too.
for _name in ("pydicom", "highdicom"):
    logging.getLogger(_name).addFilter(_MuteOwnReads())


@contextlib.contextmanager
def pydicom_muted() -> Iterator[None]:
    """Silence pydicom's and highdicom's warnings and log lines while this thread is inside:
    they can quote header values (names, dates)."""
    _quiet.active = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _quiet.active = False


def is_dicom(data: bytes) -> bool:
    """True for Part-10 files (``DICM`` after the 128-byte preamble)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def read_dataset(path: Path, data: bytes) -> Any:
    """Parse a DICOM (Part 10 or bare ACR-NEMA) from bytes; CxrEdgeError if it is not one."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        with pydicom_muted():
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            # Touch every element now so a broken header fails here, not halfway through decoding.
            keywords = [elem.keyword for elem in ds]
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types; its messages may quote header values
        raise CxrEdgeError(path, f"not a readable DICOM file ({type(exc).__name__})") from None
    if not ({"PixelData", "Rows", "Columns", "Modality", "SOPClassUID"} & set(keywords)):
        raise CxrEdgeError(path, "not an image: not PNG, JPEG or DICOM")
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        # ACR-NEMA / headerless: record the encoding pydicom actually parsed.
        implicit, little = getattr(ds, "original_encoding", (True, True))
        if not hasattr(ds, "file_meta") or ds.file_meta is None:
            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return ds


def _first(value: Any) -> float:
    """First number of a possibly multi-valued DS/IS element."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def window_to_unit(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2/3 windowing of modality values to float64 in [0, 1]."""
    x = values.astype(np.float64)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    # LINEAR (the default) uses the half-pixel-shifted form of the standard.
    if width <= 1.0:
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _voi_to_unit(modality_values: np.ndarray, ds: Any) -> tuple[np.ndarray, str]:
    """Apply the header's VOI to modality values -> float64 in [0, 1] and a short description."""
    from pydicom.pixels.processing import apply_voi_lut

    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        out = apply_voi_lut(modality_values, ds, index=0, prefer_lut=True).astype(np.float64)
        # Scale by the LUT's own output range (the table itself), not by this image's range.
        entries, first_mapped = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor[:2])
        inputs = np.arange(first_mapped, first_mapped + (entries or 65536), dtype=np.float64)
        table = apply_voi_lut(inputs, ds, index=0, prefer_lut=True).astype(np.float64)
        low, high = float(table.min()), float(table.max())
        return np.clip((out - low) / max(high - low, 1e-12), 0.0, 1.0), "VOI LUT"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        except (TypeError, ValueError, IndexError):
            center, width = float("nan"), float("nan")
        if np.isfinite(center) and np.isfinite(width) and width > 0:
            function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
            return window_to_unit(modality_values, center, width, function), f"window {center:g}/{width:g}"
    bits_stored = int(ds.get("BitsStored", 16) or 16)
    low, high = float(modality_values.min()), float(modality_values.max())
    if bits_stored <= 8 and low >= 0.0 and high <= 255.0:
        return modality_values.astype(np.float64) / 255.0, "none (8-bit)"
    return (modality_values.astype(np.float64) - low) / max(high - low, 1e-12), "min-max"


def _transfer_syntax_name(ds: Any) -> str:
    uid = ds.file_meta.get("TransferSyntaxUID")
    return "unknown" if uid is None else str(getattr(uid, "name", uid))


def dicom_to_l(path: Path, ds: Any, allow_non_chest: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Scope check, decode, Modality LUT, VOI, MONOCHROME1 inversion -> ``(h, w) uint8`` and info."""
    from pydicom.pixels.processing import apply_modality_lut

    problem = scope_problem(ds)
    if problem and not allow_non_chest:
        raise CxrEdgeError(path, f"refused, {problem}; override with allow_non_chest / --allow-non-chest")
    if "PixelData" not in ds:
        raise CxrEdgeError(path, "DICOM has no PixelData (header only, no image)")
    syntax = _transfer_syntax_name(ds)
    try:
        with pydicom_muted():
            stored = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many types; their text is not for users
        raise CxrEdgeError(
            path, f"cannot decode DICOM pixel data ({syntax}; {type(exc).__name__}: truncated or unsupported)"
        ) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        raise CxrEdgeError(path, f"multi-frame DICOM ({frames} frames); expected one radiograph")
    if stored.ndim not in (2, 3) or min(stored.shape[:2]) < 1:
        raise CxrEdgeError(path, f"unexpected DICOM pixel array shape {stored.shape}")
    info: dict[str, Any] = {
        "format": "dicom",
        "modality": str(ds.get("Modality", "") or "") or None,
        "body_part": str(ds.get("BodyPartExamined", "") or "") or None,
        "view_position": str(ds.get("ViewPosition", "") or "") or None,
        "photometric": photometric,
        "bits_stored": int(ds.get("BitsStored", 8 * stored.dtype.itemsize) or 0),
        "transfer_syntax": syntax,
        "width": int(stored.shape[1]),
        "height": int(stored.shape[0]),
    }
    if problem:
        info["scope_warning"] = problem
    if samples == 3 or stored.ndim == 3:
        # pydicom hands colour data over as RGB; no grayscale VOI applies to it.
        rgb = (
            stored
            if stored.dtype == np.uint8
            else (stored >> (8 * stored.dtype.itemsize - 8)).astype(np.uint8)
        )
        info.update(voi="none (colour)", inverted=False)
        return np.ascontiguousarray(pil_luma(rgb[..., :3])), info
    with pydicom_muted():
        modality_values = apply_modality_lut(stored, ds)
        unit, voi = _voi_to_unit(modality_values, ds)
    gray = np.rint(unit * 255.0).astype(np.uint8)
    inverted = photometric == "MONOCHROME1"
    if inverted:
        gray = 255 - gray
    info.update(voi=voi, inverted=inverted, modality_lut="ModalityLUTSequence" in ds or "RescaleSlope" in ds)
    return np.ascontiguousarray(gray), info
