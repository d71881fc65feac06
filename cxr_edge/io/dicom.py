"""DICOM radiographs -> the 8-bit display image a reader would see (the reference's "L" image).

Order of operations (DICOM PS3.4 grayscale pipeline): stored values -> Modality LUT / rescale
slope+intercept -> VOI (VOI LUT Sequence if present, else the first Window Center/Width with
its VOI LUT Function) -> [0, 255] -> MONOCHROME1 inverted (high values are dark). Without any
VOI in the header, 8-bit data are taken as they are and deeper data are stretched min..max.
Compressed transfer syntaxes (JPEG, JPEG lossless, JPEG 2000) decode through the pylibjpeg
plugins. Files without file meta (ACR-NEMA) are read with ``force=True``.

Refused before decoding (``cxr_edge.io.budget``): more pixels than the input budget, more than
one frame, native PixelData shorter than Rows x Columns x frames x samples x bytes (pydicom
would pad it), encapsulated JPEG / JPEG-LS / JPEG 2000 frames without their end marker, and
deflated datasets that inflate past the budget (inflated in bounded steps, the header first).
Refused after decoding, with the reason: baseline JPEG frames whose decoder reports corrupt
data, unusable rescale (non-finite or zero slope), windows or LUTs that give non-finite or
constant pixels, PALETTE COLOR without a usable palette (with one, the palette is applied and
the colour image converted to luma like PIL's "L").

Nothing identifying ever leaves this module: ``info`` holds only technical facts, and errors
quote no header value except modality/anatomy/view codes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cxr_edge.errors import CxrEdgeError
from cxr_edge.io.budget import InputBudget
from cxr_edge.io.decoder_messages import decode_image, one_line
from cxr_edge.io.gray import pil_luma, to_8bit
from cxr_edge.io.scope import header_scope, scope_problem

_quiet = threading.local()


class _MuteOwnReads(logging.Filter):
    """Drops pydicom/highdicom log records emitted while this thread is inside :func:`pydicom_muted`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "active", False)


# highdicom (building DICOM results) quotes header values in its log lines and warnings too.
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


DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"
#: Inflated bytes read first from a deflated dataset to find Rows x Columns before the rest.
_HEADER_PREFIX_BYTES = 1 << 20
_PIXEL_DATA_TAG = 0x7FE00010


def _file_meta_end(data: bytes) -> int | None:
    """Offset where the dataset starts after the Part-10 file meta (group 0002), or None.

    The group begins with (0002,0000) FileMetaInformationGroupLength (explicit VR LE, UL)."""
    if (
        not is_dicom(data)
        or len(data) < 144
        or data[132:136] != b"\x02\x00\x00\x00"
        or data[136:138] != b"UL"
    ):
        return None
    (group_length,) = struct.unpack("<I", data[140:144])
    return 144 + int(group_length)


def _inflate_bounded(path: Path, data: bytes, meta_end: int, budget: InputBudget) -> Any:
    """Parse a deflated dataset without ever holding more than the budget: inflate 1 MiB,
    read the header up to PixelData, check its pixel count, then inflate the rest."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_dataset as read_raw

    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        head = inflater.decompress(data[meta_end:], _HEADER_PREFIX_BYTES)
        header = read_raw(
            io.BytesIO(head), False, True, stop_when=lambda tag, vr, length: int(tag) == _PIXEL_DATA_TAG
        )
        rows, cols = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
        if "Rows" in header and "Columns" in header:
            frames = int(header.get("NumberOfFrames", 1) or 1)
            budget.check_pixels(path, cols, rows, frames, what="deflated DICOM")
        rest = inflater.decompress(inflater.unconsumed_tail, budget.max_bytes - len(head) + 1)
        if len(head) + len(rest) > budget.max_bytes or inflater.unconsumed_tail:
            raise CxrEdgeError(
                path, f"deflated DICOM inflates past the input budget of {budget.max_bytes / 1e6:g} MB"
            )
        ds = read_raw(io.BytesIO(head + rest), False, True)
        ds.file_meta = FileMetaDataset(read_raw(io.BytesIO(data[132:meta_end]), False, True))
    except CxrEdgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - zlib and pydicom raise many types; messages may quote values
        raise CxrEdgeError(path, f"not a readable deflated DICOM file ({type(exc).__name__})") from None
    return ds


def read_dataset(path: Path, data: bytes, budget: InputBudget | None = None) -> Any:
    """Parse a DICOM (Part 10 or bare ACR-NEMA) from bytes; CxrEdgeError if it is not one."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    budget = budget or InputBudget()
    meta_end = _file_meta_end(data)
    deflated = meta_end is not None and DEFLATED_SYNTAX.encode() in data[132:meta_end]
    try:
        with pydicom_muted():
            if deflated and meta_end is not None:
                ds = _inflate_bounded(path, data, meta_end, budget)
            else:
                ds = pydicom.dcmread(io.BytesIO(data), force=True)
            # Touch every element now so a broken header fails here, not halfway through decoding.
            keywords = [elem.keyword for elem in ds]
    except CxrEdgeError:
        raise
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
        # The exponent is clipped where the logistic is already 0 or 1 in float64 (no overflow).
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700.0, 700.0)))
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


def _orientation_values(value: Any) -> list[str] | None:
    """Patient Orientation (0020,0020) as its two direction codes (e.g. ``["L", "F"]``), or None
    when absent, empty or malformed. Anatomical direction letters only: not identifying."""
    if value is None:
        return None
    items = [value] if isinstance(value, (str, bytes)) else list(value)
    codes = [str(v.decode() if isinstance(v, bytes) else v).strip().upper() for v in items]
    if len(codes) == 1:
        codes = codes[0].split("\\")
    if len(codes) != 2 or not all(c and set(c) <= set("LRAPHF") for c in codes):
        return None
    return codes


def _transfer_syntax_name(ds: Any) -> str:
    uid = ds.file_meta.get("TransferSyntaxUID")
    return "unknown" if uid is None else str(getattr(uid, "name", uid))


#: Encapsulated syntaxes whose frames end with an end marker FF D9 (JPEG EOI, JPEG-LS EOI,
#: JPEG 2000 EOC): JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000 (UID prefixes).
_MARKER_ENDED_PREFIXES = (
    "1.2.840.10008.1.2.4.5",
    "1.2.840.10008.1.2.4.7",
    "1.2.840.10008.1.2.4.8",
    "1.2.840.10008.1.2.4.9",
    "1.2.840.10008.1.2.4.20",
)
#: JPEG baseline (8-bit) and extended (12-bit) process 1/2/4: libjpeg can tell us about corruption.
_LIBJPEG_SYNTAXES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")


def _header_int(ds: Any, keyword: str, default: int) -> int:
    value = ds.get(keyword, default)
    try:
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError):
        return default


def _check_pixel_data(path: Path, ds: Any, budget: InputBudget) -> int:
    """Budget, frame count and PixelData length from the header, before anything is decoded.
    Returns SamplesPerPixel (1 or 3)."""
    rows, cols = _header_int(ds, "Rows", 0), _header_int(ds, "Columns", 0)
    frames = _header_int(ds, "NumberOfFrames", 1)
    samples = _header_int(ds, "SamplesPerPixel", 1)
    bits = _header_int(ds, "BitsAllocated", 16)
    budget.check_pixels(path, cols, rows, max(frames, 1), what="DICOM")
    if frames > 1:
        raise CxrEdgeError(path, f"multi-frame DICOM ({frames} frames); expected one radiograph")
    if samples not in (1, 3) or bits not in (1, 8, 16, 32):
        raise CxrEdgeError(path, f"unsupported DICOM pixels ({samples} samples of {bits} bits)")
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    element = ds["PixelData"]
    if not getattr(element, "is_undefined_length", False) and not syntax.startswith("1.2.840.10008.1.2.4"):
        # Native (uncompressed) pixels: the length is fixed by the header.
        needed = (rows * cols * frames * samples * bits + 7) // 8
        have = len(ds.PixelData)
        if have < needed:
            raise CxrEdgeError(
                path,
                f"DICOM PixelData holds {have} bytes, Rows x Columns x samples x bits needs {needed} "
                "(truncated file; refused, not padded)",
            )
        return samples
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception as exc:  # noqa: BLE001 - broken item tags raise several types
        raise CxrEdgeError(path, f"broken encapsulated DICOM pixel data ({type(exc).__name__})") from None
    body = bytes(frame).rstrip(b"\x00")
    if syntax.startswith(_MARKER_ENDED_PREFIXES) and not body.endswith(b"\xff\xd9"):
        raise CxrEdgeError(path, "truncated compressed DICOM frame (no end marker); refused")
    if syntax in _LIBJPEG_SYNTAXES:
        _check_jpeg_frame(path, body)
    return samples


def _check_jpeg_frame(path: Path, frame: bytes) -> None:
    """Decode a baseline/extended JPEG frame once with libjpeg to hear about corrupt data (if
    OpenCV cannot decode it at all, pydicom's own decoder then says whether it can read it)."""
    corrupt = decode_image(frame, "jpeg").corrupt
    if corrupt:
        raise CxrEdgeError(path, f"corrupt JPEG data in the DICOM frame, refused ({one_line(corrupt[0])})")


def _check_rescale(path: Path, ds: Any) -> None:
    """A rescale slope of 0 or a non-finite slope/intercept would give a constant or NaN image."""
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            try:
                value = _first(ds.get(keyword))
            except (TypeError, ValueError, IndexError):
                raise CxrEdgeError(path, f"unusable DICOM {keyword} (not a number)") from None
            if not np.isfinite(value) or (keyword == "RescaleSlope" and value == 0.0):
                raise CxrEdgeError(
                    path, f"unusable DICOM {keyword} {value!r}: the image would be blank or NaN"
                )


def _palette_to_l(path: Path, stored: np.ndarray, ds: Any) -> np.ndarray:
    """PALETTE COLOR: apply the palette (RGB), then PIL's luma, as PIL does for "P" images."""
    from pydicom.pixels.processing import apply_color_lut

    try:
        with pydicom_muted():
            rgb = apply_color_lut(stored, ds)
    except Exception as exc:  # noqa: BLE001 - missing/broken LUT descriptors raise several types
        raise CxrEdgeError(
            path, f"PALETTE COLOR DICOM without a usable palette ({type(exc).__name__})"
        ) from None
    if rgb.dtype not in (np.uint8, np.uint16):
        rgb = np.clip(rgb, 0, 65535).astype(np.uint16)
    return pil_luma(to_8bit(np.ascontiguousarray(rgb[..., :3])))


def dicom_to_l(
    path: Path, ds: Any, allow_non_chest: bool = False, budget: InputBudget | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Scope check, budget, decode, Modality LUT, VOI, MONOCHROME1 inversion -> ``(h, w) uint8`` and info."""
    from pydicom.pixels.processing import apply_modality_lut

    budget = budget or InputBudget()
    problem = scope_problem(ds)
    if problem and not allow_non_chest:
        raise CxrEdgeError(path, f"refused, {problem}; override with allow_non_chest / --allow-non-chest")
    if "PixelData" not in ds:
        raise CxrEdgeError(path, "DICOM has no PixelData (header only, no image)")
    samples = _check_pixel_data(path, ds, budget)
    syntax = _transfer_syntax_name(ds)
    try:
        with pydicom_muted():
            stored = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many types; their text is not for users
        raise CxrEdgeError(
            path, f"cannot decode DICOM pixel data ({syntax}; {type(exc).__name__}: truncated or unsupported)"
        ) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if stored.ndim not in (2, 3) or min(stored.shape[:2]) < 1:
        raise CxrEdgeError(path, f"unexpected DICOM pixel array shape {stored.shape}")
    info: dict[str, Any] = {
        "format": "dicom",
        "modality": str(ds.get("Modality", "") or "") or None,
        "body_part": str(ds.get("BodyPartExamined", "") or "") or None,
        "view_position": str(ds.get("ViewPosition", "") or "") or None,
        "patient_orientation": _orientation_values(ds.get("PatientOrientation")),
        "image_laterality": str(ds.get("ImageLaterality", "") or "") or None,
        "photometric": photometric,
        "bits_stored": int(ds.get("BitsStored", 8 * stored.dtype.itemsize) or 0),
        "transfer_syntax": syntax,
        "width": int(stored.shape[1]),
        "height": int(stored.shape[0]),
        "scope": header_scope(ds, problem),
    }
    if problem:
        info["scope_warning"] = problem
    if photometric == "PALETTE COLOR":
        info.update(voi="none (palette applied)", inverted=False)
        return np.ascontiguousarray(_palette_to_l(path, stored, ds)), info
    if samples == 3 or stored.ndim == 3:
        # pydicom hands colour data over as RGB; no grayscale VOI applies to it.
        rgb = (
            stored
            if stored.dtype == np.uint8
            else (stored >> (8 * stored.dtype.itemsize - 8)).astype(np.uint8)
        )
        info.update(voi="none (colour)", inverted=False)
        return np.ascontiguousarray(pil_luma(rgb[..., :3])), info
    _check_rescale(path, ds)
    try:
        # Overflow or invalid arithmetic (a 1e308 window, a huge LUT) is an error, not a warning.
        with pydicom_muted(), np.errstate(all="raise"):
            modality_values = apply_modality_lut(stored, ds)
            unit, voi = _voi_to_unit(modality_values, ds)
    except FloatingPointError:
        raise CxrEdgeError(path, "DICOM rescale/window overflows: the header's values are unusable") from None
    if not np.all(np.isfinite(unit)):
        raise CxrEdgeError(path, f"DICOM rescale/window ({voi}) gives non-finite pixels; refused")
    gray = np.rint(unit * 255.0).astype(np.uint8)
    if int(gray.max()) - int(gray.min()) == 0:
        raise CxrEdgeError(
            path,
            f"DICOM rescale/window ({voi}) gives a constant image (every pixel {int(gray[0, 0])}); refused",
        )
    inverted = photometric == "MONOCHROME1"
    if inverted:
        gray = 255 - gray
    info.update(voi=voi, inverted=inverted, modality_lut="ModalityLUTSequence" in ds or "RescaleSlope" in ds)
    return np.ascontiguousarray(gray), info
