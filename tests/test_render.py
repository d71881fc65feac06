"""Overlay formula against an independent per-pixel float64 implementation, and the legend."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_edge.preprocess import CropBox
from cxr_edge.render import DIVERGING_LUT, encode_png, overlay


def reference_overlay(
    gray: np.ndarray, value_map: np.ndarray, crop: CropBox, vmax: float, alpha_max: float
) -> np.ndarray:
    """The documented formula, literally, one pixel at a time in float64."""
    n = value_map.shape[0]
    out = np.repeat(gray[:, :, None], 3, axis=2).astype(np.int64)
    for y in range(crop.top, crop.top + crop.side):
        for x in range(crop.left, crop.left + crop.side):
            u = (y + 0.5 - crop.top) * n / crop.side - 0.5
            v = (x + 0.5 - crop.left) * n / crop.side - 0.5
            u = min(max(u, 0.0), n - 1.0)
            v = min(max(v, 0.0), n - 1.0)
            u0, v0 = int(np.floor(u)), int(np.floor(v))
            u1, v1 = min(u0 + 1, n - 1), min(v0 + 1, n - 1)
            fu, fv = u - u0, v - v0
            m = (
                (1 - fu) * (1 - fv) * value_map[u0, v0]
                + (1 - fu) * fv * value_map[u0, v1]
                + fu * (1 - fv) * value_map[u1, v0]
                + fu * fv * value_map[u1, v1]
            )
            t = min(max(m / vmax, -1.0), 1.0)
            colour = DIVERGING_LUT[int(np.floor((t + 1) * 127.5 + 0.5))].astype(np.float64)
            a = alpha_max * abs(t)
            out[y, x] = np.floor((1 - a) * float(gray[y, x]) + a * colour + 0.5)
    return out


def test_lut_is_blue_white_red() -> None:
    assert DIVERGING_LUT.shape == (256, 3) and DIVERGING_LUT.dtype == np.uint8
    blue, red = DIVERGING_LUT[0].astype(int), DIVERGING_LUT[255].astype(int)
    assert blue[2] > blue[0] + 100 and red[0] > red[2] + 100
    assert DIVERGING_LUT[127].min() >= 250 and DIVERGING_LUT[128].min() >= 250
    # The blue half gets steadily lighter (toward white), the red half steadily redder.
    assert np.all(np.diff(DIVERGING_LUT[:128, 0].astype(int)) >= 0)
    assert np.all(np.diff(DIVERGING_LUT[128:, 2].astype(int)) <= 0)


@pytest.mark.parametrize(("h", "w"), [(37, 53), (61, 29), (40, 40)])
def test_overlay_matches_the_formula(h: int, w: int) -> None:
    rng = np.random.default_rng(h * w)
    gray = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
    side = min(h, w)
    crop = CropBox(top=(h - side) // 2, left=(w - side) // 2, side=side)
    value_map = rng.normal(0.0, 1.5, size=(16, 16)).astype(np.float32)
    vmax = 2.0
    got = overlay(gray, value_map, crop, vmax, alpha_max=0.6)
    want = reference_overlay(gray, value_map.astype(np.float64), crop, vmax, 0.6)
    assert got.shape == (h, w, 3) and got.dtype == np.uint8
    diff = np.abs(got.astype(np.int64) - want)
    # float32 vs float64 can flip a value sitting exactly on a .5 rounding edge, nothing more.
    assert diff.max() <= 1
    assert (diff == 0).mean() > 0.995


def test_outside_the_crop_is_plain_gray_and_colours_follow_the_sign() -> None:
    gray = np.full((30, 50), 128, dtype=np.uint8)
    crop = CropBox(top=0, left=10, side=30)
    value_map = np.zeros((8, 8), dtype=np.float32)
    value_map[:, :4] = -3.0  # left half: evidence against
    value_map[:, 4:] = 3.0  # right half: evidence for
    rgb = overlay(gray, value_map, crop, vmax=3.0)
    assert np.all(rgb[:, :10] == 128) and np.all(rgb[:, 40:] == 128)
    left, right = rgb[:, 12].astype(int), rgb[:, 37].astype(int)
    assert np.all(left[:, 2] > left[:, 0] + 20)  # blue
    assert np.all(right[:, 0] > right[:, 2] + 20)  # red


def test_zero_map_leaves_the_image_untouched() -> None:
    gray = np.arange(24 * 24, dtype=np.uint8).reshape(24, 24)
    crop = CropBox(0, 0, 24)
    rgb = overlay(gray, np.zeros((8, 8), np.float32), crop, vmax=0.0)
    assert np.array_equal(rgb, np.repeat(gray[:, :, None], 3, axis=2))


def test_encode_png_round_trips() -> None:
    import cv2

    rgb = np.random.default_rng(0).integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    decoded = cv2.imdecode(np.frombuffer(encode_png(rgb), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decoded[:, :, ::-1], rgb)
