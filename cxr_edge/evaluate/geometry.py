"""Saliency maps taken from the model frame back to the native image, as the localization
protocols score them.

The model sees the centre square of the image (``preprocess.center_crop_box``) resized to N x N
(N = 512). A map in that frame can be brought to the native ``(h, w)`` image in two ways:

- ``crop_placed``: resized to the crop's side and put back where the crop came from. Native
  pixels outside the crop have no map value (the model never saw them): they are never a peak
  and never part of a predicted region, while ground truth there still counts. This is the
  true geometry, used by the ``chexlocalize`` protocol.
- ``stretched``: resized to ``(h, w)`` over the whole image, as the public MedicalPatchNet code
  does (``evalClassification.genChexlocalizeMap`` stores the crop's map with the uncropped
  size, and CheXlocalize resizes it to that size). On a non-square image this misregisters the
  map (it is squeezed along the long side); used only by the ``medicalpatchnet`` protocol.

Both resize like ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
(no antialiasing), which CheXlocalize v1.0.0 uses (``eval.get_map``,
``heatmap_to_segmentation.pkl_to_mask``): source coordinate ``(i + 0.5) * in / out - 0.5``,
clamped at 0, linear between the two neighbours (the last one repeated at the far edge). Here
in float64 as ``a + t * (b - a)``, so a constant run stays exactly constant: ties between equal
map values are real ties (torch's float32 arithmetic breaks some of them by rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxr_edge.preprocess import CropBox


def _resize_axis(values: np.ndarray, size: int, axis: int) -> np.ndarray:
    n = values.shape[axis]
    if n == size:
        return values
    src = np.maximum((np.arange(size, dtype=np.float64) + 0.5) * (n / size) - 0.5, 0.0)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    shape = [1, 1]
    shape[axis] = size
    t = (src - lo).reshape(shape)
    a = np.take(values, lo, axis=axis)
    b = np.take(values, hi, axis=axis)
    out: np.ndarray = a + t * (b - a)
    return out


def bilinear_resize(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W)`` map -> ``(height, width) float64``, bilinear with half-pixel centres, no
    antialiasing (``F.interpolate(..., mode="bilinear", align_corners=False)``)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or height < 1 or width < 1:
        raise ValueError(f"need a 2-D map and a positive size, got {arr.shape} -> ({height}, {width})")
    return _resize_axis(_resize_axis(arr, height, 0), width, 1)


@dataclass(frozen=True)
class NativeMap:
    """A map over a native ``(h, w)`` image, defined on the rows ``top .. top + values.shape[0]``
    and columns ``left .. left + values.shape[1]`` (the whole image or the crop).

    values: ``(rh, rw) float64``; shape: the native ``(h, w)``.
    """

    values: np.ndarray
    top: int
    left: int
    shape: tuple[int, int]

    def embed(self, region: np.ndarray) -> np.ndarray:
        """A ``(rh, rw) bool`` region of the defined part -> ``(h, w) bool`` (False elsewhere)."""
        out = np.zeros(self.shape, bool)
        rh, rw = self.values.shape
        out[self.top : self.top + rh, self.left : self.left + rw] = region
        return out

    def within(self, mask: np.ndarray) -> np.ndarray:
        """The part of a native ``(h, w)`` mask that lies on the defined part, ``(rh, rw)``."""
        rh, rw = self.values.shape
        part: np.ndarray = mask[self.top : self.top + rh, self.left : self.left + rw]
        return part

    def first_argmax(self) -> tuple[int, int]:
        """Native ``(row, col)`` of the first maximum in raster order (``np.argmax``)."""
        r, c = np.unravel_index(int(np.argmax(self.values)), self.values.shape)
        return int(r) + self.top, int(c) + self.left


def crop_placed(model_map: np.ndarray, crop: CropBox, shape: tuple[int, int]) -> NativeMap:
    """The model-frame ``(N, N)`` map resized to the crop's side and placed at the crop."""
    return NativeMap(bilinear_resize(model_map, crop.side, crop.side), crop.top, crop.left, shape)


def stretched(model_map: np.ndarray, shape: tuple[int, int]) -> NativeMap:
    """The model-frame map resized over the whole ``(h, w)`` image (the public MedicalPatchNet
    code's geometry; misregistered unless the image is square)."""
    return NativeMap(bilinear_resize(model_map, shape[0], shape[1]), 0, 0, shape)
