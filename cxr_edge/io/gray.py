"""Decoded samples -> the reference's 8-bit grayscale ("L") image, bit-exact with PIL.

The reference reads images with ``PIL.Image.open(p).convert("L")``. For 8-bit data that is
ITU-R 601-2 luma in PIL's fixed point: ``L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16``,
alpha ignored (the weights sum to 65536, so gray stored as RGB comes back unchanged).

16-bit samples are reduced to their high byte. That is exactly what PIL does when it opens a
16-bit RGB/RGBA PNG. For 16-bit *grayscale* PIL opens mode "I;16" and its "L" conversion clips
every value above 255 to white, which would turn a real 16-bit X-ray into a blank image, so
we keep the high-byte rule there too: an 8-bit image widened by bit replication (v * 257, the
PNG recommendation) or by a shift (v << 8) round-trips exactly.
"""

from __future__ import annotations

import numpy as np

_LUMA_WEIGHTS = (19595, 38470, 7471)


def to_8bit(samples: np.ndarray) -> np.ndarray:
    """uint8 passes through; uint16 -> high byte ``v >> 8``; returns uint8 of the same shape."""
    if samples.dtype == np.uint8:
        return samples
    if samples.dtype == np.uint16:
        return (samples >> 8).astype(np.uint8)
    raise ValueError(f"unsupported sample type {samples.dtype}")


def pil_luma(rgb: np.ndarray) -> np.ndarray:
    """``(h, w, 3) uint8`` in R, G, B order -> ``(h, w) uint8``, bit-exact with PIL's RGB -> L."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    luma = r * _LUMA_WEIGHTS[0] + g * _LUMA_WEIGHTS[1] + b * _LUMA_WEIGHTS[2] + 0x8000
    return (luma >> 16).astype(np.uint8)


def opencv_to_l(decoded: np.ndarray) -> np.ndarray:
    """An OpenCV-decoded image (gray, BGR or BGRA; uint8 or uint16) -> ``(h, w) uint8`` "L"."""
    samples = to_8bit(decoded)
    if samples.ndim == 2:
        return samples
    if samples.ndim == 3 and samples.shape[2] == 1:
        return samples[..., 0]
    if samples.ndim == 3 and samples.shape[2] in (3, 4):
        # OpenCV decodes to B, G, R(, A); alpha is ignored as in PIL's RGBA -> L.
        return pil_luma(samples[..., 2::-1])
    raise ValueError(f"unsupported decoded image shape {decoded.shape}")
