"""Both scaled maps pinned: the definition (cxr-edge) and the public code's batched variant.

The published variant is checked against an op-by-op float64 emulation of the public tensor code
(``reference_math.reference_published_scaled_map``) and against each consequence stated in
docs/model.md, "The scaled map against the public code", computed here from per-copy loops.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference_math import (
    reference_maps_from_logits,
    reference_pairs,
    reference_published_scaled_map,
    reference_shift_back,
    sigmoid,
)

from cxr_edge.postprocess import SaliencyAccumulator
from cxr_edge.postprocess_published import published_placement, published_scaled_map
from cxr_edge.tile import shift_pairs

SIZE, PATCH, CLASSES = 128, 16, 3  # an 8 x 8 grid like the model's, on a small image
GRID = SIZE // PATCH


def random_logits(steps: int, seed: int = 0) -> np.ndarray:
    """(S*S, G*G, C) patch logits whose copies have clearly different image probabilities."""
    rng = np.random.default_rng(seed)
    per_copy = rng.normal(0.0, 2.0, (steps * steps, 1, CLASSES))
    return per_copy + rng.normal(0.0, 1.5, (steps * steps, GRID * GRID, CLASSES))


def definition_scaled(logits: np.ndarray, steps: int) -> np.ndarray:
    acc = SaliencyAccumulator(steps, SIZE, PATCH, CLASSES)
    acc.add(shift_pairs(steps, PATCH), logits.reshape(-1, CLASSES))
    return acc.finish(tuple("abc")).scaled


def placed_map(logits: np.ndarray, steps: int, logit_copy: list[int], prob_copy: list[int]) -> np.ndarray:
    """Average over offsets k of copy logit_copy[k]'s patch logits x copy prob_copy[k]'s probability."""
    probs = sigmoid(logits.mean(axis=1))
    total = np.zeros((CLASSES, SIZE, SIZE))
    for k, (dr, dc) in enumerate(reference_pairs(steps, PATCH)):
        total += reference_shift_back(logits[logit_copy[k]] * probs[prob_copy[k]], dr, dc, SIZE, PATCH)
    return total / steps**2


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_the_emulation_matches_the_library_at_batch_4(steps: int) -> None:
    logits = random_logits(steps, seed=steps)
    ours = published_scaled_map(logits, steps, SIZE, PATCH, batch_size=4)
    emulated = reference_published_scaled_map(logits, steps, SIZE, PATCH, batch_size=4)
    assert ours.shape == (CLASSES, SIZE, SIZE) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, emulated, rtol=1e-5, atol=1e-5 * np.abs(emulated).max())


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_at_batch_size_1_the_published_map_is_the_definition(steps: int) -> None:
    logits = random_logits(steps, seed=10 + steps)
    reference = reference_maps_from_logits(logits, steps, SIZE, PATCH)["scaled"]
    scale = np.abs(reference).max()
    published = published_scaled_map(logits, steps, SIZE, PATCH, batch_size=1)
    np.testing.assert_allclose(published, reference, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(definition_scaled(logits, steps), reference, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(
        reference_published_scaled_map(logits, steps, SIZE, PATCH, batch_size=1), reference, rtol=1e-12
    )


def test_at_s1_one_copy_makes_every_batch_size_the_definition() -> None:
    logits = random_logits(1, seed=3)
    reference = reference_maps_from_logits(logits, 1, SIZE, PATCH)["scaled"]
    np.testing.assert_allclose(
        published_scaled_map(logits, 1, SIZE, PATCH, batch_size=4), reference, rtol=1e-5
    )


def test_at_s2_batch_4_every_copy_is_weighted_by_copy_0s_probability() -> None:
    steps = 2
    logits = random_logits(steps, seed=21)
    p0 = sigmoid(logits[0].mean(axis=0))  # (C,): copy 0 = shift (-P/2, -P/2), its own probability
    expected = np.zeros((CLASSES, SIZE, SIZE))
    for k, (dr, dc) in enumerate(reference_pairs(steps, PATCH)):
        expected += reference_shift_back(logits[k] * p0, dr, dc, SIZE, PATCH)
    expected /= steps**2
    published = published_scaled_map(logits, steps, SIZE, PATCH)
    np.testing.assert_allclose(published, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    # ... which is not the definition: the copies' probabilities differ
    assert relative(expected, reference_maps_from_logits(logits, steps, SIZE, PATCH)["scaled"]) > 1e-2


@pytest.mark.parametrize("steps", [4, 8])
def test_from_s4_on_patch_logits_land_at_other_copies_offsets(steps: int) -> None:
    count = steps * steps
    logits = random_logits(steps, seed=30 + steps)
    published = published_scaled_map(logits, steps, SIZE, PATCH)
    # Batch b of 4 copies yields 16 blocks; the first K blocks are read as the K copies, so
    # offset e carries copy (e // 16) * 4 + e % 4's logits x copy e // 4's probability.
    expected = placed_map(
        logits, steps, [(e // 16) * 4 + e % 4 for e in range(count)], [e // 4 for e in range(count)]
    )
    np.testing.assert_allclose(published, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    # Only the first quarter of the copies enters at all: the others can change freely.
    changed = logits.copy()
    changed[count // 4 :] = random_logits(steps, seed=99)[count // 4 :]
    np.testing.assert_array_equal(published_scaled_map(changed, steps, SIZE, PATCH), published)
    assert relative(definition_scaled(changed, steps), definition_scaled(logits, steps)) > 1e-2
    if steps == 4:
        # Said as docs/model.md says it: at (dr, dc) sit the logits of copy (-P/2, dc) times the
        # probability of copy (-P/2, dr).
        pairs = reference_pairs(steps, PATCH)
        copy = {pair: k for k, pair in enumerate(pairs)}
        top = -PATCH // 2
        by_pairs = placed_map(
            logits, steps, [copy[(top, dc)] for _, dc in pairs], [copy[(top, dr)] for dr, _ in pairs]
        )
        np.testing.assert_allclose(published, by_pairs, rtol=1e-5, atol=1e-6 * np.abs(by_pairs).max())


def test_placement_is_the_identity_exactly_when_one_batch_holds_one_copy() -> None:
    for count in (1, 4, 16, 64):
        logit_copy, prob_copy = published_placement(count, batch_size=1)
        assert logit_copy.tolist() == prob_copy.tolist() == list(range(count))
    logit_copy, prob_copy = published_placement(4, batch_size=4)
    assert logit_copy.tolist() == [0, 1, 2, 3] and prob_copy.tolist() == [0, 0, 0, 0]


def test_batch_sizes_the_public_code_cannot_run_are_refused() -> None:
    steps = 3  # 9 copies: batches of 4, 4, 1 do not concatenate
    logits = random_logits(steps, seed=5)
    with pytest.raises(ValueError):
        reference_published_scaled_map(logits, steps, SIZE, PATCH, batch_size=4)
    with pytest.raises(ValueError, match="cannot run 9 copies in batches of 4"):
        published_scaled_map(logits, steps, SIZE, PATCH, batch_size=4)
    with pytest.raises(ValueError, match="patch logits must be"):
        published_scaled_map(logits[:4], steps, SIZE, PATCH)
