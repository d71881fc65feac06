"""Tiling against the literal reference: offsets, shift order, zero padding, patch order, chunking."""

from __future__ import annotations

import time

import numpy as np
import pytest
from reference_math import reference_offsets, reference_pairs, reference_patches, reference_shifted

from cxr_edge.tile import (
    PatchBatch,
    iter_patch_batches,
    level_pairs,
    shift_index,
    shift_offsets,
    shift_pairs,
    tile_shifts,
)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 8, 16, 32, 64])
def test_offsets_match_reference(steps: int) -> None:
    offsets = shift_offsets(steps, 64)
    assert offsets.dtype == np.int64
    assert offsets.tolist() == reference_offsets(steps, 64)


def test_offsets_nest_and_cover() -> None:
    for steps in [1, 2, 4, 8, 16, 32]:
        assert set(shift_offsets(steps, 64).tolist()) <= set(shift_offsets(2 * steps, 64).tolist())
    full = shift_offsets(64, 64)
    assert len(set(full.tolist())) == 64
    assert full.min() == -32 and full.max() == 31
    assert 0 in shift_offsets(1, 64).tolist()


def test_pairs_row_major() -> None:
    pairs = shift_pairs(4, 64)
    assert pairs.shape == (16, 2)
    assert [tuple(p) for p in pairs.tolist()] == reference_pairs(4, 64)


def test_bad_steps_rejected() -> None:
    with pytest.raises(ValueError):
        shift_offsets(0, 64)
    with pytest.raises(ValueError):
        shift_offsets(65, 64)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_tile_matches_reference(steps: int) -> None:
    rng = np.random.default_rng(steps)
    size, patch = 64, 16
    image = rng.random((size, size), dtype=np.float32)
    pairs = shift_pairs(steps, patch)
    patches = tile_shifts(image, pairs, patch)
    grid = size // patch
    assert patches.shape == (len(pairs) * grid * grid, 1, patch, patch)
    assert patches.dtype == np.float32
    expected = np.concatenate(
        [
            reference_patches(reference_shifted(image, dr, dc, patch), patch)
            for dr, dc in reference_pairs(steps, patch)
        ]
    )
    np.testing.assert_array_equal(patches[:, 0], expected.astype(np.float32))


def test_tile_shift_semantics() -> None:
    """shifted[u, v] = image[u + dr, v + dc]: a single bright pixel moves by -dr, -dc."""
    size, patch = 32, 8
    image = np.zeros((size, size), np.float32)
    image[10, 12] = 1.0
    patches = tile_shifts(image, np.array([[3, -2]]), patch)
    grid = size // patch
    rebuilt = patches[:, 0].reshape(grid, grid, patch, patch).transpose(0, 2, 1, 3).reshape(size, size)
    assert np.argwhere(rebuilt).tolist() == [[7, 14]]
    # a shift of -P/2 brings zeros in at the top/left border
    edge = tile_shifts(np.ones((size, size), np.float32), np.array([[-4, -4]]), patch)
    rebuilt = edge[:, 0].reshape(grid, grid, patch, patch).transpose(0, 2, 1, 3).reshape(size, size)
    assert rebuilt[:4].sum() == 0 and rebuilt[:, :4].sum() == 0 and rebuilt[4:, 4:].min() == 1


def test_tile_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        tile_shifts(np.zeros((60, 64), np.float32), shift_pairs(1, 16), 16)
    with pytest.raises(ValueError):
        tile_shifts(np.zeros((64, 64), np.float32), np.array([[8, 0]]), 16)
    with pytest.raises(ValueError):
        tile_shifts(np.zeros((64, 64), np.float32), np.array([0, 0]), 16)


def test_batches_cover_all_shifts_in_order() -> None:
    rng = np.random.default_rng(0)
    size, patch, steps = 64, 16, 4
    image = rng.random((size, size), dtype=np.float32)
    per_shift = (size // patch) ** 2
    batches = list(iter_patch_batches(image, steps, patch, max_patches=3 * per_shift + 5))
    assert all(isinstance(b, PatchBatch) for b in batches)
    assert [len(b.pairs) for b in batches] == [3, 3, 3, 3, 3, 1]
    assert [b.first_shift for b in batches] == [0, 3, 6, 9, 12, 15]
    assert max(len(b.patches) for b in batches) <= 3 * per_shift + 5
    np.testing.assert_array_equal(np.concatenate([b.pairs for b in batches]), shift_pairs(steps, patch))
    np.testing.assert_array_equal(
        np.concatenate([b.patches for b in batches]), tile_shifts(image, shift_pairs(steps, patch), patch)
    )
    with pytest.raises(ValueError):
        next(iter_patch_batches(image, steps, patch, max_patches=per_shift - 1))


def test_shift_index_is_the_position_in_reference_order_and_refuses_other_offsets() -> None:
    steps, patch = 4, 16
    pairs = np.array(reference_pairs(steps, patch))[::-1]
    want = [reference_pairs(steps, patch).index((int(dr), int(dc))) for dr, dc in pairs]
    np.testing.assert_array_equal(shift_index(pairs, steps, patch), want)
    with pytest.raises(ValueError, match="offset 3 is not one of the 4-step offsets"):
        shift_index(np.array([[0, 0], [0, 3]]), steps, patch)
    # one shift (16 patches) per batch: each level-4 batch starts at its pair's reference index
    image = np.zeros((64, 64), np.float32)
    firsts = [b.first_shift for b in iter_patch_batches(image, steps, patch, 16, level_pairs(4, patch))]
    assert firsts == [reference_pairs(steps, patch).index((int(r), int(c))) for r, c in level_pairs(4, patch)]
    with pytest.raises(ValueError, match="offset"):
        next(iter_patch_batches(image, steps, patch, 16, np.array([[0, 3]])))


def test_tile_s8_full_size_is_fast() -> None:
    image = np.random.default_rng(1).random((512, 512), dtype=np.float32)
    pairs = shift_pairs(8, 64)
    tile_shifts(image, pairs, 64)  # warm-up (page faults)
    start = time.perf_counter()
    patches = tile_shifts(image, pairs, 64)
    elapsed = time.perf_counter() - start
    assert patches.shape == (4096, 1, 64, 64)
    # spot check one patch literally: shift k=9 -> (offsets[1], offsets[1]), patch row 2 col 5
    dr, dc = pairs[9]
    np.testing.assert_array_equal(
        patches[9 * 64 + 2 * 8 + 5, 0], reference_shifted(image, dr, dc)[128:192, 320:384]
    )
    buffer = np.empty_like(patches)
    start = time.perf_counter()
    reused = tile_shifts(image, pairs, 64, out=buffer)
    elapsed_reused = time.perf_counter() - start
    assert reused is buffer
    np.testing.assert_array_equal(reused, patches)
    print(f"\ntile S=8: {elapsed * 1e3:.1f} ms fresh, {elapsed_reused * 1e3:.1f} ms into a reused buffer")
    assert elapsed < 0.5, f"tiling S=8 took {elapsed:.3f} s"
    with pytest.raises(ValueError, match="out must be"):
        tile_shifts(image, pairs, 64, out=np.empty((10, 1, 64, 64), np.float32))
