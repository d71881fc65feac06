"""PNG / JPEG (and other raster formats OpenCV reads) -> the reference's 8-bit "L" pixels.

Decoded with OpenCV ``IMREAD_UNCHANGED`` so that, like ``PIL.Image.open``, no EXIF rotation is
applied and 16-bit samples and alpha arrive untouched; then :mod:`cxr_edge.io.gray` makes the
PIL-exact "L" image. PNG results are bit-exact with PIL. JPEG goes through OpenCV's libjpeg
(-turbo) rather than PIL's; both use the default integer IDCT and fancy upsampling, so results
agree on the files we checked, but a different libjpeg build may differ by a grey level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxr_edge.errors import CxrEdgeError
from cxr_edge.io.gray import opencv_to_l

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


def decode_raster(path: Path, data: bytes, fmt: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode an encoded raster image to ``(h, w) uint8`` "L" plus safe facts about it."""
    import cv2

    _check_complete(path, data, fmt)
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.size == 0:
        raise CxrEdgeError(path, f"cannot decode {fmt.upper()} data (corrupt or truncated file)")
    if decoded.dtype not in (np.uint8, np.uint16):
        raise CxrEdgeError(path, f"unsupported {fmt.upper()} sample type {decoded.dtype}")
    channels = 1 if decoded.ndim == 2 else int(decoded.shape[2])
    if channels not in (1, 3, 4):
        raise CxrEdgeError(path, f"unsupported {fmt.upper()} with {channels} channels")
    gray = opencv_to_l(decoded)
    info = {
        "format": fmt,
        "bits": 8 * decoded.dtype.itemsize,
        "channels": channels,
        "width": int(gray.shape[1]),
        "height": int(gray.shape[0]),
    }
    return np.ascontiguousarray(gray), info
