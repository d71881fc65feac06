"""The reference preprocessing: centre square crop, antialiased bilinear resize, divide by 255.

The public MedicalPatchNet code does ``ToTensor()`` (uint8 -> float32 / 255) and then
torchvision ``Resize`` on the tensor, i.e. ``torch.nn.functional.interpolate(mode="bilinear",
antialias=True, align_corners=False)`` in float32. This module reproduces that with numpy only
(no torch at run time): the resize is separable, each axis a short list of taps whose weights
are computed exactly as PyTorch's antialiased bilinear kernel computes them. The contract:
docs/model.md, "Input and preprocessing".
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from cxr_edge.errors import CxrEdgeError

#: float32 value of every 8-bit grey level, computed as ToTensor does (float32 division by 255).
_U8_TO_UNIT = (np.arange(256, dtype=np.float32) / np.float32(255.0)).astype(np.float32)


@dataclass(frozen=True)
class CropBox:
    """The square the model sees, in original-image pixels: rows top..top+side, cols left..left+side."""

    top: int
    left: int
    side: int


@dataclass(frozen=True)
class Preprocessed:
    """Model input for one X-ray.

    ``image``: ``(S, S) float32 in [0, 1]`` with S = image_size; ``crop``: where it came from in
    the original image; ``original_shape``: ``(h, w)`` of the original 8-bit image.
    """

    image: np.ndarray
    crop: CropBox
    original_shape: tuple[int, int]


def center_crop_box(height: int, width: int) -> CropBox:
    """The reference's centre square: side min(h, w), margins ``(w-side)//2`` and ``(h-side)//2``."""
    side = min(height, width)
    return CropBox(top=(height - side) // 2, left=(width - side) // 2, side=side)


@functools.lru_cache(maxsize=32)
def resize_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Taps of PyTorch's antialiased bilinear resize along one axis (align_corners=False).

    Returns ``index (out_size, T) int64`` (source positions, always valid) and
    ``weight (out_size, T) float32`` (rows sum to 1; unused taps have weight 0). Output sample
    i is ``sum_t weight[i, t] * src[index[i, t]]``. Same formulas as ATen's
    ``_compute_indices_min_size_weights_aa``: the triangle filter is widened by the scale when
    downsampling (that is the antialiasing) and plain bilinear when upsampling.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1, got {in_size} -> {out_size}")
    scale = in_size / out_size
    support = max(scale, 1.0)
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    centers = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    # ATen truncates toward zero (a C++ cast), then clamps to the image.
    first = np.maximum(np.trunc(centers - support + 0.5).astype(np.int64), 0)
    stop = np.minimum(np.trunc(centers + support + 0.5).astype(np.int64), in_size)
    count = stop - first
    taps = int(count.max())
    offsets = np.arange(taps, dtype=np.int64)
    position = first[:, None] + offsets[None, :]
    weight = np.clip(1.0 - np.abs((position - centers[:, None] + 0.5) * invscale), 0.0, None)
    weight[offsets[None, :] >= count[:, None]] = 0.0
    weight /= weight.sum(axis=1, keepdims=True)
    index = np.minimum(position, in_size - 1)
    weight32 = weight.astype(np.float32)
    # Cached and shared between calls (and threads): make them read-only.
    index.flags.writeable = False
    weight32.flags.writeable = False
    return index, weight32


def _resize_rows(img: np.ndarray, out_rows: int) -> np.ndarray:
    """Resize axis 0 of ``(H, W) float32`` to ``(out_rows, W) float32``."""
    index, weight = resize_taps(img.shape[0], out_rows)
    out: np.ndarray = weight[:, 0, None] * img[index[:, 0]]
    for t in range(1, index.shape[1]):
        out += weight[:, t, None] * img[index[:, t]]
    return out


def antialiased_resize(img: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(h, w)`` float (or uint8 taken as-is) to ``(size, size) float32``.

    Equals ``torch.nn.functional.interpolate(x[None, None], (size, size), mode="bilinear",
    antialias=True, align_corners=False)`` up to float32 rounding (measured max |diff| ~1e-7
    on [0, 1] data). Cost is O(size * (h + w) * taps); 1024 -> 512 takes a few ms.
    """
    if img.ndim != 2 or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"expected a non-empty (h, w) image, got shape {img.shape}")
    # uint8 stays uint8 for the first gather (float32 weights promote the products).
    src = img if img.dtype in (np.uint8, np.float32) else np.asarray(img, dtype=np.float32)
    # Rows are gathered whole (contiguous); the column pass runs on the transpose for the same reason.
    rows = _resize_rows(src, size)
    out: np.ndarray = np.ascontiguousarray(_resize_rows(np.ascontiguousarray(rows.T), size).T)
    return out


def preprocess(gray: np.ndarray, image_size: int = 512, path: str | None = None) -> Preprocessed:
    """The reference preprocessing of an 8-bit grayscale X-ray.

    ``gray``: ``(h, w) uint8`` (the reference's PIL "L" image). Centre square crop (see
    :func:`center_crop_box`), divide by 255 in float32 (ToTensor), antialiased bilinear resize to
    ``(image_size, image_size)``. Returns :class:`Preprocessed` with ``image`` float32 in [0, 1].
    ``path`` only names the input in errors.
    """
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise CxrEdgeError(path, f"expected an (h, w) uint8 grayscale image, got {gray.dtype} {gray.shape}")
    height, width = gray.shape
    if height < 1 or width < 1:
        raise CxrEdgeError(path, f"empty image ({height}x{width} pixels)")
    crop = center_crop_box(height, width)
    square = gray[crop.top : crop.top + crop.side, crop.left : crop.left + crop.side]
    if crop.side == image_size:
        image = _U8_TO_UNIT[square]
    else:
        # Resize the 0..255 levels and divide afterwards: the same linear map as ToTensor then
        # Resize, 4x less memory traffic than converting the full-size crop first; the float32
        # rounding differs from torch's order by ~1e-7.
        image = antialiased_resize(square, image_size)
        image *= np.float32(1.0 / 255.0)
    return Preprocessed(image=image, crop=crop, original_shape=(height, width))
