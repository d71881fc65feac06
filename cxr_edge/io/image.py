"""PNG / JPEG -> the reference's 8-bit "L" pixels, refusing bombs and corrupt data.

Decoded with OpenCV ``IMREAD_UNCHANGED`` so that, like ``PIL.Image.open``, no EXIF rotation is
applied and 16-bit samples and alpha arrive untouched; then :mod:`cxr_edge.io.gray` makes the
PIL-exact "L" image. PNG results are bit-exact with PIL. JPEG goes through OpenCV's libjpeg
(-turbo) rather than PIL's; both use the default integer IDCT and fancy upsampling, so results
agree on the files we checked, but a different libjpeg build may differ by a grey level.

Before decoding, the header's size is checked against the input budget (``cxr_edge.io.budget``);
while decoding, what libjpeg/libpng print is caught (``cxr_edge.io.decoder_messages``): a
warning about corrupt or premature data is a refusal, never a grey-padded image. TIFF, BMP and
WebP are recognised only to be refused by name (the runtime takes PNG, JPEG and DICOM).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxr_edge.errors import CxrEdgeError
from cxr_edge.io.budget import InputBudget, jpeg_size, png_size
from cxr_edge.io.decoder_messages import decode_image, one_line
from cxr_edge.io.gray import opencv_to_l

#: Raster formats decoded; others that ``raster_format`` recognises are refused by name.
SUPPORTED_RASTER_FORMATS = ("png", "jpeg")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


def raster_format(data: bytes) -> str | None:
    """Format name from the leading bytes ("png", "jpeg", "tiff", "bmp", "webp"), or None."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data.startswith(b"BM"):
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _check_complete(path: Path, data: bytes, fmt: str) -> None:
    """Refuse truncated files that decoders would silently pad with grey."""
    if fmt == "png" and data.rfind(b"IEND") < 0:
        raise CxrEdgeError(path, "truncated PNG (no IEND chunk)")
    # Entropy-coded JPEG data cannot contain FF D9, so a complete file has an end-of-image
    # marker after its last start-of-scan (an EXIF thumbnail's EOI sits before it).
    if fmt == "jpeg" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise CxrEdgeError(path, "truncated JPEG (no end-of-image marker after the last scan)")


def decode_raster(
    path: Path, data: bytes, fmt: str, budget: InputBudget | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a PNG or JPEG to ``(h, w) uint8`` "L" plus safe facts about it.

    Refuses (CxrEdgeError): other formats, a header over ``budget``, truncated files, and any
    decoder error or corruption warning (quoted as the one-line cause).
    """
    budget = budget or InputBudget()
    if fmt not in SUPPORTED_RASTER_FORMATS:
        raise CxrEdgeError(path, f"{fmt.upper()} is not supported: give PNG, JPEG or DICOM")
    width, height = png_size(path, data) if fmt == "png" else jpeg_size(path, data)
    budget.check_pixels(path, width, height, what=fmt.upper())
    _check_complete(path, data, fmt)
    outcome = decode_image(data, fmt)
    decoded, corrupt = outcome.image, outcome.corrupt
    if decoded is None or decoded.size == 0:
        cause = corrupt[0] if corrupt else outcome.error or "corrupt or truncated file"
        raise CxrEdgeError(path, f"cannot decode {fmt.upper()} data ({one_line(cause)})")
    if corrupt:
        raise CxrEdgeError(path, f"corrupt {fmt.upper()} data, refused ({one_line(corrupt[0])})")
    if decoded.shape[:2] != (height, width):
        raise CxrEdgeError(
            path, f"decoded {decoded.shape[1]} x {decoded.shape[0]} pixels, header says {width} x {height}"
        )
    if decoded.dtype not in (np.uint8, np.uint16):
        raise CxrEdgeError(path, f"unsupported {fmt.upper()} sample type {decoded.dtype}")
    channels = 1 if decoded.ndim == 2 else int(decoded.shape[2])
    if channels not in (1, 3, 4):
        raise CxrEdgeError(path, f"unsupported {fmt.upper()} with {channels} channels")
    gray = opencv_to_l(decoded)
    info: dict[str, Any] = {
        "format": fmt,
        "bits": 8 * decoded.dtype.itemsize,
        "channels": channels,
        "width": int(gray.shape[1]),
        "height": int(gray.shape[0]),
    }
    if outcome.messages:  # harmless ones only (ancillary PNG chunks): kept as facts, not printed
        info["decoder_warnings"] = [one_line(m) for m in outcome.messages]
    return np.ascontiguousarray(gray), info
