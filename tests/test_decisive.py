"""Decisive patches (issue 17): greedy is optimal (brute force), and the numbers of a real
prediction equal an independent float64 computation from the reference patch logits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from reference_math import reference_patch_logits

from cxr_edge.explain.decisive import decisive_json, decisive_order, decisive_patches, probability_logit
from cxr_edge.metadata import ModelMetadata
from cxr_edge.pipeline import CxrEdge

IMAGE_SIZE, PATCH = 128, 16
LABELS = ("Alpha", "Beta", "Gamma", "Delta")


def reverses(logits: np.ndarray, t: float, positive: bool, subset: tuple[int, ...]) -> bool:
    """Literal check: replace the subset's logits by t and decide again, mean >= t taken as
    sum(l_i - t) >= 0 (the same test without the rounding of a mean of equal values)."""
    changed = np.array(logits, dtype=np.float64).ravel().copy()
    changed[list(subset)] = t
    now_positive = (changed - t).sum() >= 0
    return bool(now_positive != positive)


def brute_force_minimum(logits: np.ndarray, t: float, positive: bool) -> int | None:
    """Size of the smallest subset whose neutralisation reverses the call (None: no subset)."""
    n = logits.size
    e = np.asarray(logits, dtype=np.float64).ravel() - t
    masks = np.array(list(itertools.product((0, 1), repeat=n)), dtype=bool)  # (2^n, n): neutralised
    left = (~masks).astype(np.float64) @ e  # sum of l_i - t over the patches left as they are
    ok = left < 0 if positive else left >= 0
    if not ok.any():
        return None
    return int(masks[ok].sum(axis=1).min())


@pytest.mark.parametrize("grid", [2, 3, 4])
def test_greedy_is_the_smallest_set_brute_force(grid: int) -> None:
    rng = np.random.default_rng(grid)
    cases = 0
    for trial in range(60 if grid < 4 else 25):
        logits = rng.normal(rng.normal(0, 2), rng.uniform(0.5, 4), size=(grid, grid))
        if trial % 5 == 0:
            logits = np.round(logits)  # ties
        if trial % 7 == 0:
            logits[rng.random((grid, grid)) < 0.5] *= 20.0  # a few dominant patches
        t = float(rng.normal(0, 2))
        positive = bool(logits.mean() >= t)
        indices, ok, share = decisive_order(logits, t, positive)
        want = brute_force_minimum(logits, t, positive)
        if want is None:
            assert not ok and len(indices) == 0
            continue
        cases += 1
        assert ok and len(indices) == want, (logits, t, positive)
        assert reverses(logits, t, positive, tuple(indices.tolist()))
        # most decisive first; the set is as strong as any set of its size
        e = logits.ravel() - t
        v = e if positive else -e
        assert np.all(np.diff(v[indices]) <= 0)
        side = np.clip(v, 0, None).sum()
        assert share == pytest.approx(v[indices].sum() / side, rel=1e-12)
        assert 0 < share <= 1 + 1e-12
    assert cases > 20


def test_a_positive_call_with_every_patch_above_the_threshold_cannot_be_reversed() -> None:
    logits = np.array([[1.0, 2.0], [3.0, 0.5]])
    indices, ok, share = decisive_order(logits, 0.5, True)
    assert not ok and len(indices) == 0 and share is None
    assert brute_force_minimum(logits, 0.5, True) is None
    # a negative call can always be reversed: at worst every patch below the threshold
    indices, ok, share = decisive_order(logits, 3.5, False)
    assert ok and len(indices) == 4 and share == pytest.approx(1.0)


class LinearBackend:
    name = "linear-test"
    thread_safe = True

    def __init__(self, thresholds: tuple[float, ...] | None, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.metadata = ModelMetadata(
            labels=LABELS, image_size=IMAGE_SIZE, patch_size=PATCH, thresholds=thresholds
        )
        self.weight = rng.normal(0.0, 0.03, size=(PATCH * PATCH, len(LABELS)))
        self.bias = rng.normal(0.0, 0.5, size=len(LABELS))

    def logits64(self, patches: np.ndarray) -> np.ndarray:
        return patches.reshape(len(patches), -1).astype(np.float64) @ self.weight + self.bias

    def run(self, patches: np.ndarray) -> np.ndarray:
        return self.logits64(patches).astype(np.float32)


def plain_greedy(values: list[float], t: float, positive: bool) -> list[int]:
    """The decisive set in plain Python, from the definition: keep adding the patch that moves
    the sum the most towards the other side until the call flips."""
    remaining = list(range(len(values)))
    chosen: list[int] = []
    current = list(values)
    while remaining:
        if (sum(x - t for x in current) >= 0) != positive:
            return chosen
        pick = max(remaining, key=lambda i: (values[i] - t) if positive else (t - values[i]))
        remaining.remove(pick)
        chosen.append(pick)
        current[pick] = t
    return chosen if ((sum(x - t for x in current) >= 0) != positive) else []


@pytest.mark.parametrize("thresholds", [(0.3, 0.5, 0.7, 0.9), None])
def test_prediction_decisive_patches_match_an_independent_computation(thresholds: tuple | None) -> None:
    backend = LinearBackend(thresholds, seed=2)
    edge = CxrEdge(backend)
    gray = np.random.default_rng(5).integers(0, 256, size=(140, 160), dtype=np.uint8)
    pred = edge.predict(gray, steps=2)
    model_input = edge.prepare(gray).model_input.astype(np.float64)
    ref = reference_patch_logits(model_input, backend.logits64, steps=1, patch_size=PATCH)[0]  # (G*G, C)
    grid = IMAGE_SIZE // PATCH
    # patch_logits: the unshifted copy's, patch row-major
    np.testing.assert_allclose(pred.maps.patch_logits, ref.T.reshape(len(LABELS), grid, grid), atol=1e-5)
    for c, label in enumerate(LABELS):
        d = decisive_patches(pred, label)
        p_ref = 0.5 if thresholds is None else thresholds[c]
        t = float(np.log(p_ref / (1 - p_ref)))
        positive = bool(pred.findings[c].probability >= p_ref)
        values = [float(v) for v in pred.maps.patch_logits[c].ravel()]
        want = plain_greedy(values, t, positive)
        assert [r * grid + q for r, q in d.patches] == want
        assert d.positive == positive and d.thresholded == (thresholds is not None)
        assert d.reference_probability == p_ref and d.grid_patches == grid * grid
        # the float64 reference patch logits lead to the same set
        assert plain_greedy([float(v) for v in ref[:, c]], t, positive) == want
        entry = decisive_json(d)
        if not want:  # a positive call with every patch at or above the threshold
            assert positive and not d.reverses and entry["count"] is None and entry["patches"] == []
            assert bool((np.array(values) >= t).all())
            continue
        # neutralising the set really reverses the call
        assert reverses(np.array(values), t, positive, tuple(want))
        assert entry["count"] == len(want) and entry["patches"] == [[i // grid, i % grid] for i in want]
        assert entry["call"] == ("positive" if positive else "negative")


def test_demo_sample_pleural_effusion() -> None:
    """The quick start's sample: its positive Pleural Effusion rests on few patches, and
    neutralising exactly those (in float64, from the S=1 raw map's blocks) turns it negative."""
    from cxr_edge.assets import sample_image_path

    pred = CxrEdge.load().predict(sample_image_path(), steps=1)
    d = decisive_patches(pred, "Pleural Effusion")
    assert d.positive and d.reverses and d.count is not None and 1 <= d.count <= 10
    blocks = pred.maps.raw[pred.metadata.label_index("Pleural Effusion"), ::64, ::64].astype(np.float64)
    np.testing.assert_array_equal(
        blocks, pred.maps.patch_logits[pred.metadata.label_index("Pleural Effusion")]
    )
    t = probability_logit(pred.finding("Pleural Effusion").threshold or 0.5)
    flat = [r * 8 + c for r, c in d.patches]
    assert reverses(blocks, t, True, tuple(flat))
    assert not reverses(blocks, t, True, tuple(flat[:-1]))
