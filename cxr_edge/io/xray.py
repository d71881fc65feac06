"""``load_xray``: any supported file -> the reference's 8-bit grayscale image plus safe facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr_edge.errors import CxrEdgeError
from cxr_edge.io.budget import InputBudget, read_input_file
from cxr_edge.io.dicom import dicom_to_l, is_dicom, read_dataset
from cxr_edge.io.image import decode_raster, raster_format


@dataclass(frozen=True)
class XrayImage:
    """One decoded X-ray.

    ``pixels``: ``(h, w) uint8``, the reference's PIL "L" image (DICOM: after Modality LUT, VOI
    and MONOCHROME1 inversion). ``source``: "png", "jpeg", "dicom" (or "tiff", "bmp", "webp").
    ``info``: non-identifying technical facts (format, bits, size; for DICOM modality, body
    part, view position, photometric, transfer syntax, VOI used). Never patient data.
    """

    pixels: np.ndarray
    path: Path
    source: str
    info: dict[str, Any] = field(default_factory=dict)


def load_xray(
    path: str | Path, allow_non_chest: bool = False, budget: InputBudget | None = None
) -> XrayImage:
    """Read a PNG, JPEG or DICOM X-ray as the reference's 8-bit grayscale image.

    The format is found from the file's bytes, not its name. DICOMs whose header says they are
    not a frontal chest radiograph (modality, body part, view position) are refused unless
    ``allow_non_chest``; then ``info["scope_warning"]`` says why it would have been refused.
    ``budget`` (default ``InputBudget()``, 100 MP) bounds the file's bytes and the pixels its
    header declares, checked before decoding. Raises CxrEdgeError(path, problem) for missing,
    special (FIFO, device), unreadable, empty, oversized, truncated, corrupt or non-image files;
    never returns a partial image.
    """
    path = Path(path)
    budget = budget or InputBudget()
    data = read_input_file(path, budget)
    fmt = raster_format(data)
    if fmt is not None:
        pixels, info = decode_raster(path, data, fmt, budget)
        return XrayImage(pixels=pixels, path=path, source=fmt, info=info)
    # Part-10 DICOM, or an ACR-NEMA file without preamble (only pydicom can tell).
    if not is_dicom(data) and len(data) < 8:
        raise CxrEdgeError(path, "not an image: not PNG, JPEG or DICOM")
    ds = read_dataset(path, data, budget)
    pixels, info = dicom_to_l(path, ds, allow_non_chest=allow_non_chest, budget=budget)
    return XrayImage(pixels=pixels, path=path, source="dicom", info=info)
