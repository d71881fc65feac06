"""Postprocess against the literal float64 reference (tests/reference_math.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from reference_math import reference_maps_from_logits, reference_saliency

from cxr_edge.postprocess import SaliencyAccumulator, SaliencyMaps, shift_average, sigmoid, smooth_maps
from cxr_edge.tile import iter_patch_batches, shift_pairs


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_maps_match_reference(steps: int) -> None:
    size, patch, classes = 128, 16, 3
    grid = size // patch
    rng = np.random.default_rng(steps)
    logits = rng.normal(0, 3, size=(steps * steps, grid * grid, classes))
    want = reference_maps_from_logits(logits, steps, size, patch)
    acc = SaliencyAccumulator(steps, size, patch, classes)
    acc.add(shift_pairs(steps, patch), logits.reshape(-1, classes))
    maps = acc.finish(("a", "b", "c"))
    assert isinstance(maps, SaliencyMaps)
    assert maps.steps == steps and maps.labels == ("a", "b", "c")
    assert maps.raw.shape == maps.scaled.shape == (classes, size, size)
    assert maps.raw.dtype == maps.scaled.dtype == maps.logits.dtype == np.float32
    for key in ("raw", "scaled"):
        err = _rel_err(getattr(maps, key), want[key])
        assert err <= 1e-6, f"{key} S={steps}: {err:.2e}"  # float32 output rounding only
    np.testing.assert_allclose(maps.logits, want["logits"], rtol=1e-6)
    np.testing.assert_allclose(maps.probabilities, want["probabilities"], rtol=1e-6)


def test_full_size_s2_matches_reference() -> None:
    """The real geometry (512, patch 64) and an odd class count."""
    steps, classes = 2, 5
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 2, size=(steps * steps, 64, classes))
    want = reference_maps_from_logits(logits, steps, 512, 64)
    raw, scaled = smooth_maps(logits.reshape(-1, classes), steps, 512, 64)
    assert _rel_err(raw, want["raw"]) <= 1e-6
    assert _rel_err(scaled, want["scaled"]) <= 1e-6


def test_float64_core_is_exact() -> None:
    """The float64 internals agree with the reference to rounding (~1e-15), before the float32 cast."""
    steps, size, patch, classes = 4, 64, 16, 2
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1, size=(steps * steps, (size // patch) ** 2, classes))
    acc = SaliencyAccumulator(steps, size, patch, classes)
    acc.add(shift_pairs(steps, patch), logits.reshape(-1, classes))
    raw64 = acc._smooth(acc._logits, np.float64)  # the private float64 path, no float32 cast
    want = reference_maps_from_logits(logits, steps, size, patch)["raw"]
    assert raw64.dtype == np.float64
    assert _rel_err(raw64, want) <= 1e-12


def test_chunks_in_any_order_equal_one_shot() -> None:
    steps, size, patch, classes = 4, 64, 16, 3
    per_shift = (size // patch) ** 2
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(steps * steps * per_shift, classes)).astype(np.float32)
    pairs = shift_pairs(steps, patch)
    one = SaliencyAccumulator(steps, size, patch, classes)
    one.add(pairs, logits)
    expected = one.finish(("a", "b", "c"))

    chunked = SaliencyAccumulator(steps, size, patch, classes)
    order = rng.permutation(len(pairs))
    for chunk in np.array_split(order, 5):
        rows = (chunk[:, None] * per_shift + np.arange(per_shift)[None, :]).ravel()
        chunked.add(pairs[chunk], logits[rows])
    got = chunked.finish(("a", "b", "c"))
    np.testing.assert_array_equal(got.raw, expected.raw)
    np.testing.assert_array_equal(got.scaled, expected.scaled)
    np.testing.assert_array_equal(got.logits, expected.logits)


def test_image_logits_are_the_unshifted_copy() -> None:
    steps, size, patch = 2, 32, 8
    per_shift = 16
    logits = np.zeros((steps * steps * per_shift, 1))
    pairs = shift_pairs(steps, patch)
    k_zero = [tuple(p) for p in pairs.tolist()].index((0, 0))
    logits[k_zero * per_shift : (k_zero + 1) * per_shift, 0] = np.arange(per_shift)
    raw, _ = smooth_maps(logits, steps, size, patch)
    acc = SaliencyAccumulator(steps, size, patch, 1)
    acc.add(pairs, logits)
    maps = acc.finish(["x"])
    assert maps.logits[0] == pytest.approx(np.arange(per_shift).mean())
    assert maps.probabilities[0] == pytest.approx(1 / (1 + np.exp(-7.5)))
    # the unshifted copy's patch (1, 2) covers rows 8..15, cols 16..23 with value 6, weight 1/4
    assert raw[0, 12, 20] == pytest.approx(6 / 4)
    # the raw map alone, by the same arithmetic
    np.testing.assert_array_equal(shift_average(logits, steps, size, patch), raw)


def test_pipeline_composition_matches_reference() -> None:
    """tile -> a position-dependent linear patch model -> accumulator equals the literal reference."""
    steps, size, patch, classes = 4, 64, 16, 2
    rng = np.random.default_rng(5)
    image = rng.random((size, size)).astype(np.float32)
    weights = rng.normal(size=(patch * patch, classes))
    bias = rng.normal(size=classes)

    def patch_fn(patches: np.ndarray) -> np.ndarray:
        return patches.reshape(len(patches), -1).astype(np.float64) @ weights + bias

    want = reference_saliency(image.astype(np.float64), patch_fn, steps, patch)
    acc = SaliencyAccumulator(steps, size, patch, classes)
    for batch in iter_patch_batches(image, steps, patch, max_patches=3 * 16):
        acc.add(batch.pairs, patch_fn(batch.patches[:, 0]))
    maps = acc.finish(("p", "q"))
    assert _rel_err(maps.raw, want["raw"]) <= 1e-5
    assert _rel_err(maps.scaled, want["scaled"]) <= 1e-5
    np.testing.assert_allclose(maps.logits, want["logits"], rtol=1e-5)


def test_validation() -> None:
    acc = SaliencyAccumulator(2, 32, 8, 2)
    pairs = shift_pairs(2, 8)
    with pytest.raises(ValueError, match="logits must be"):
        acc.add(pairs, np.zeros((4 * 16, 3)))
    with pytest.raises(ValueError, match="offset"):
        acc.add(np.array([[1, 0]]), np.zeros((16, 2)))
    acc.add(pairs[:2], np.zeros((32, 2)))
    with pytest.raises(ValueError, match="twice"):
        acc.add(pairs[1:3], np.zeros((32, 2)))
    with pytest.raises(ValueError, match="shifts were added"):
        acc.finish(["a", "b"])
    with pytest.raises(ValueError, match="labels"):
        SaliencyAccumulator(1, 32, 8, 2).finish(["a"])
    with pytest.raises(ValueError):
        SaliencyAccumulator(1, 30, 8, 2)


def test_sigmoid_stable() -> None:
    with np.errstate(over="raise"):
        out = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0])


def test_s64_timing_full_size() -> None:
    """S=64 (262,144 patches), C=14 at 512 / 64: must stay well under a second on 2 cores."""
    steps, classes = 64, 14
    logits = np.random.default_rng(2).normal(size=(steps * steps * 64, classes)).astype(np.float32)
    start = time.perf_counter()
    raw, scaled = smooth_maps(logits, steps, 512, 64)
    elapsed = time.perf_counter() - start
    print(f"\npostprocess S=64 C=14: {elapsed * 1000:.0f} ms")
    assert raw.shape == scaled.shape == (classes, 512, 512)
    assert np.isfinite(raw).all() and np.isfinite(scaled).all()
    # a few pixels straight from the definition: mean over shifts of patchmap[y - dr, x - dc]
    pairs = shift_pairs(steps, 64)
    per_shift = logits.reshape(steps * steps, 8, 8, classes).astype(np.float64)
    for y, x in [(0, 0), (31, 480), (255, 256), (511, 3), (500, 511)]:
        sy, sx = y - pairs[:, 0], x - pairs[:, 1]
        inside = (sy >= 0) & (sy < 512) & (sx >= 0) & (sx < 512)
        k = np.flatnonzero(inside)
        want = per_shift[k, sy[k] // 64, sx[k] // 64].sum(axis=0) / steps**2
        np.testing.assert_allclose(raw[:, y, x], want, rtol=1e-5, atol=1e-6)
    assert elapsed < 3.0, f"S=64 postprocess took {elapsed:.2f} s"
