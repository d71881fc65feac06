"""The CUDA postprocess and overlay arithmetic, emulated in float32 numpy (tests/kernel_emulation.py),
against float64 references: no GPU needed.

Logits carry a realistic offset (0, -12, -25: a model's logits for absent findings sit far
below zero) on top of a smooth spatial field and noise. Tolerances are relative to the map's
largest magnitude; a separate test shows that the error no longer grows with the offset
(the kernel centres the logits on their mean before its running sums).
"""

from __future__ import annotations

import numpy as np
import pytest
from kernel_emulation import (
    REL_TOL,
    emulate_overlay,
    emulate_postprocess,
    separable_reference,
    structured_logits,
)
from reference_math import reference_maps_from_logits

N, P = 512, 64
G = N // P


def max_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max())


def test_separable_reference_is_the_literal_definition() -> None:
    """The fast float64 reference equals tests/reference_math.py's shift-and-average loop."""
    image_size, patch, steps, classes = 128, 16, 4, 3
    logits = structured_logits(steps, -7.0, classes, seed=1, image_size=image_size, patch_size=patch)
    fast = separable_reference(logits, steps, image_size, patch)
    grid = image_size // patch
    literal = reference_maps_from_logits(
        logits.reshape(steps * steps, grid * grid, classes), steps, image_size, patch
    )
    for kind in ("raw", "scaled", "logits"):
        np.testing.assert_allclose(fast[kind], literal[kind], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("steps", [8, 64])
@pytest.mark.parametrize("offset", [0.0, -12.0, -25.0])
def test_kernel_arithmetic_meets_a_relative_tolerance_with_biased_logits(steps: int, offset: float) -> None:
    logits = structured_logits(steps, offset, classes=2, seed=steps)
    got = emulate_postprocess(logits, steps, N, P)
    want = separable_reference(logits, steps, N, P)
    for kind in ("raw", "scaled"):
        scale = float(np.abs(want[kind]).max())
        assert max_error(got[kind], want[kind]) <= REL_TOL * scale, kind
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=REL_TOL)


def test_float16_logits_are_summed_as_their_float32_values() -> None:
    steps = 8
    logits = structured_logits(steps, -12.0, classes=3, seed=4).astype(np.float16)
    got = emulate_postprocess(logits, steps, N, P)
    want = separable_reference(logits.astype(np.float64), steps, N, P)
    for kind in ("raw", "scaled"):
        assert max_error(got[kind], want[kind]) <= REL_TOL * float(np.abs(want[kind]).max()), kind


def test_rounding_error_does_not_grow_with_the_logit_offset() -> None:
    """S = 64: the absolute error of the raw map at offsets -12 and -25 stays within twice the
    error at offset 0 plus the float32 spacing of the result itself. Summing the logits
    uncentred (what the kernel did before) fails this: its partial sums are S*|offset| large."""
    steps = 64
    errors: dict[tuple[float, bool], float] = {}
    for offset in (0.0, -12.0, -25.0):
        logits = structured_logits(steps, offset, classes=2, seed=64)
        want = separable_reference(logits, steps, N, P)["raw"]
        for centre in (True, False):
            errors[offset, centre] = max_error(emulate_postprocess(logits, steps, N, P, centre)["raw"], want)
    for offset in (-12.0, -25.0):
        allowance = 2 * errors[0.0, True] + float(np.spacing(np.float32(abs(offset) + 5)))
        assert errors[offset, True] <= allowance, (offset, errors)
    assert errors[-25.0, False] > 2 * errors[0.0, True] + float(np.spacing(np.float32(30))), errors


def test_overlay_formula_is_within_one_level_of_cv2_resize() -> None:
    """The overlay kernel's formula (float64 coordinates, float32 bilinear blend) against
    render.overlay, which samples with cv2.resize: OpenCV rounds its interpolation weights
    differently, so a blended value can land on the other side of a .5 and one byte moves by 1.
    That is the documented allowance; everything else is identical."""
    from cxr_edge.preprocess import CropBox
    from cxr_edge.render import DIVERGING_LUT, overlay

    rng = np.random.default_rng(3)
    for shape, crop in (((300, 260), (20, 0, 260)), ((700, 1100), (0, 200, 700)), ((256, 256), (0, 0, 256))):
        gray = rng.integers(0, 256, shape, dtype=np.uint8)
        value_map = (rng.standard_normal((N, N)) * 1.5).astype(np.float32)
        got = emulate_overlay(gray, value_map, crop, 2.0, DIVERGING_LUT)
        want = overlay(gray, value_map, CropBox(*crop), 2.0)
        diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
        assert diff.max() <= 1, shape
        assert (diff > 0).mean() < 1e-3, shape  # a few bytes, not a systematic shift
        top, left, side = crop
        outside = np.ones(shape, bool)
        outside[top : top + side, left : left + side] = False
        assert np.array_equal(got[outside], want[outside])


def test_overlay_formula_without_a_scale_draws_plain_gray() -> None:
    from cxr_edge.render import DIVERGING_LUT

    gray = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    out = emulate_overlay(gray, np.ones((N, N), np.float32), (0, 0, 64), 0.0, DIVERGING_LUT)
    assert np.array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))
