"""A small generated corpus of hostile inputs (issue 13): bombs, corrupt and degenerate files.

Every file is built here, in the test's temporary folder, in at most a few hundred kilobytes
and well under a second; the bombs *declare* huge sizes in valid headers (a PNG's IDAT is
streamed through zlib, never held), so refusing them proves the budget acts before decoding.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np


def xray_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth, radiograph-like 8-bit image (passes every plausibility check)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    body = 150 - 90 * ((x - 0.5) ** 2 + (y - 0.5) ** 2) + 60 * np.sin(9 * x) * np.cos(6 * y)
    return np.clip(body + rng.normal(0, 6, size=(h, w)), 0, 255).astype(np.uint8)


def png_bytes(gray: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", gray)
    assert ok
    return buf.tobytes()


def jpeg_bytes(gray: np.ndarray, progressive: bool = False) -> bytes:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    ok, buf = cv2.imencode(".jpg", gray, params)
    assert ok
    return buf.tobytes()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def png_bomb(width: int, height: int, rows_written: int | None = None) -> bytes:
    """A valid 1-bit grayscale PNG of ``width`` x ``height`` zeros (streamed: a 16384^2 bomb is
    about 40 KB). ``rows_written`` < height gives a well-formed but short IDAT (header forgery)."""
    row = b"\x00" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    parts = []
    for _ in range(height if rows_written is None else rows_written):
        parts.append(z.compress(row))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
    )


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a JPEG) with its frame header claiming ``width`` x ``height``."""
    pos = 2
    while True:
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xC2:
            return data[: pos + 5] + struct.pack(">HH", height, width) + data[pos + 9 :]
        pos += 2 + length


def cut_with_fake_end(data: bytes, fraction: float) -> bytes:
    """A JPEG cut at ``fraction`` of its length with an end-of-image marker appended."""
    return data[: int(len(data) * fraction)] + b"\xff\xd9"


def dicom_dataset(stored: np.ndarray, **header: object) -> object:
    """A minimal frontal chest DX dataset (explicit VR LE) holding ``stored`` (uint8/uint16)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.Rows, ds.Columns = stored.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    bits = 8 * stored.dtype.itemsize
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    from pydicom import config

    with config.disable_value_validation():  # hostile values ("NaN", "1e308") on purpose
        for keyword, value in header.items():
            setattr(ds, keyword, value)
    ds.PixelData = stored.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def dicom_bytes(ds: object) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)  # type: ignore[attr-defined]
    return buf.getvalue()


def dicom_truncated_pixels(stored: np.ndarray, keep: float) -> bytes:
    """A native DICOM whose PixelData element holds only ``keep`` of the pixel bytes (its
    length field consistent, so a reader sees a well-formed but short element)."""
    ds = dicom_dataset(stored)
    data = stored.tobytes()
    ds.PixelData = data[: int(len(data) * keep) // 2 * 2]  # type: ignore[attr-defined]
    return dicom_bytes(ds)


def dicom_jpeg(gray: np.ndarray, keep: float | None = None, fake_end: bool = False) -> bytes:
    """An encapsulated baseline-JPEG DICOM; ``keep`` cuts the JPEG frame (``fake_end``: and
    appends an end-of-image marker, as a careless repair would)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    frame = jpeg_bytes(gray)
    if keep is not None:
        frame = frame[: int(len(frame) * keep)] + (b"\xff\xd9" if fake_end else b"")
    ds = dicom_dataset(gray)
    ds.PixelData = encapsulate([frame])  # type: ignore[attr-defined]
    ds["PixelData"].is_undefined_length = True  # type: ignore[index]
    ds["PixelData"].VR = "OB"  # type: ignore[index]
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit  # type: ignore[attr-defined]
    return dicom_bytes(ds)


def dicom_deflated(rows: int, cols: int, pixels: np.ndarray | None = None) -> bytes:
    """A Deflated Explicit VR Little Endian DICOM of ``rows`` x ``cols`` 16-bit pixels.

    Without ``pixels`` the PixelData is zeros streamed through zlib, so a 12000 x 12000 bomb
    (288 MB inflated) is built in about 300 KB of memory."""
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    stored = np.zeros((2, 2), np.uint16) if pixels is None else pixels.astype(np.uint16)
    ds = dicom_dataset(stored)
    ds.Rows, ds.Columns = rows, cols  # type: ignore[attr-defined]
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian  # type: ignore[attr-defined]
    del ds.PixelData  # type: ignore[attr-defined]
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False  # the deflate's inner encoding
    write_dataset(body, ds)  # type: ignore[arg-type]
    nbytes = rows * cols * 2
    element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, nbytes)
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [z.compress(body.getvalue() + element)]
    if pixels is None:
        block = b"\x00" * (1 << 20)
        left = nbytes
        while left:
            parts.append(z.compress(block[: min(left, len(block))]))
            left -= min(left, len(block))
    else:
        parts.append(z.compress(pixels.astype("<u2").tobytes()))
    parts.append(z.flush())
    meta = io.BytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)  # type: ignore[attr-defined]
    return b"\x00" * 128 + b"DICM" + meta.getvalue() + b"".join(parts)


def palette_dicom(with_palette: bool) -> bytes:
    """A PALETTE COLOR DICOM: 8-bit indices into a gray-ish ramp palette (or none at all)."""
    h, w = 300, 320
    indices = xray_like(h, w, seed=5)
    ds = dicom_dataset(indices, PhotometricInterpretation="PALETTE COLOR")
    if with_palette:
        ramp = np.arange(256, dtype=np.uint16) * 257
        for colour, scale in (("Red", 1.0), ("Green", 0.9), ("Blue", 0.8)):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
            data = (ramp * scale).astype("<u2").tobytes()
            setattr(ds, f"{colour}PaletteColorLookupTableData", data)
    return dicom_bytes(ds)


def ct_like(h: int = 320, w: int = 340) -> np.ndarray:
    """Black lungs and white tissue with hardly any mid-grey: a CT slice in a lung window."""
    y, x = np.mgrid[0:h, 0:w]
    body = ((y - h / 2) / (0.45 * h)) ** 2 + ((x - w / 2) / (0.48 * w)) ** 2 < 1
    lungs = (((y - h / 2) / (0.3 * h)) ** 2 + ((np.abs(x - w / 2) - 0.22 * w) / (0.15 * w)) ** 2) < 1
    img = np.where(body, 235, 5) - np.where(lungs, 225, 0)
    return np.clip(img, 0, 255).astype(np.uint8)


def nan_onnx_model(path: Path, metadata_json: str | None = None, value: float = float("nan")) -> Path:
    """A tiny patch model (N, 1, 64, 64) -> (N, 6) whose weights are ``value`` (NaN: every
    logit NaN), carrying the demo model's metadata or ``metadata_json`` as given (unchecked)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from cxr_edge.assets import default_model_path
    from cxr_edge.metadata import METADATA_KEY, ModelMetadata

    md = ModelMetadata.from_onnx(default_model_path())
    classes = md.num_classes
    weight = np.full((64 * 64, classes), value, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["patches"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weight"], ["logits"]),
        ],
        "nan_model",
        [helper.make_tensor_value_info("patches", TensorProto.FLOAT, ["N", 1, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = metadata_json if metadata_json is not None else md.to_json()
    onnx.save(model, str(path))
    return path
