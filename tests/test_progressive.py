"""Progressive maps (issue 17): levels S' = 1, 2, 4, ..., S from one set of backend runs.

Checked against a direct ``predict(image, steps=S')`` (exact equality: same patch logits, same
arithmetic), against the literal float64 reference (tests/reference_math.py), and by counting
what the backend saw: every patch of every shifted copy of S exactly once.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest
from reference_math import reference_maps_from_logits, reference_saliency

from cxr_edge.metadata import ModelMetadata
from cxr_edge.pipeline import CxrEdge
from cxr_edge.postprocess import SaliencyAccumulator
from cxr_edge.tile import level_pairs, progressive_levels, shift_pairs, tile_shifts

IMAGE_SIZE, PATCH = 128, 16
LABELS = ("Alpha", "Beta", "Gamma")


class PerPatchBackend:
    """Patch logits = flattened patch . W + b, one patch at a time, so a patch's logits never
    depend on the batch it came in (exact comparisons across batchings). Records every patch."""

    name = "per-patch-test"
    thread_safe = False

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.metadata = ModelMetadata(labels=LABELS, image_size=IMAGE_SIZE, patch_size=PATCH)
        self.weight = rng.normal(0.0, 0.05, size=(PATCH * PATCH, len(LABELS)))
        self.bias = rng.normal(0.0, 0.5, size=len(LABELS))
        self.seen: Counter[bytes] = Counter()
        self.patches_run = 0

    def logits64(self, patches: np.ndarray) -> np.ndarray:
        flat = patches.reshape(len(patches), -1).astype(np.float64)
        return np.array([row @ self.weight + self.bias for row in flat]).reshape(len(patches), -1)

    def run(self, patches: np.ndarray) -> np.ndarray:
        for patch in patches:
            self.seen[hashlib.sha1(patch.tobytes()).digest()] += 1
        self.patches_run += len(patches)
        return self.logits64(patches).astype(np.float32)


def noisy_image(h: int, w: int, seed: int) -> np.ndarray:
    """uint8 noise: every patch of every shifted copy is distinct (patch hashes identify them)."""
    return np.random.default_rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("patch", [16, 64])
def test_level_pairs_partition_the_shifts(steps: int, patch: int) -> None:
    levels = progressive_levels(steps)
    assert levels == tuple(2**i for i in range(len(levels))) and levels[-1] == steps
    got = np.concatenate([level_pairs(level, patch) for level in levels])
    assert len(got) == steps * steps
    assert {tuple(p) for p in got} == {tuple(p) for p in shift_pairs(steps, patch)}
    # each level's new shifts plus the coarser ones are exactly that level's own shifts
    for i, level in enumerate(levels):
        upto = {tuple(p) for lv in levels[: i + 1] for p in level_pairs(lv, patch)}
        assert upto == {tuple(p) for p in shift_pairs(level, patch)}


@pytest.mark.parametrize("steps", [2, 4, 8])
def test_finish_level_equals_an_accumulator_of_that_level(steps: int) -> None:
    size, patch, classes = 128, 16, 3
    grid = size // patch
    rng = np.random.default_rng(steps)
    pairs = shift_pairs(steps, patch)
    logits = rng.normal(0, 3, size=(len(pairs), grid * grid, classes)).astype(np.float32)
    by_pair = {tuple(p): logits[k] for k, p in enumerate(pairs)}
    acc = SaliencyAccumulator(steps, size, patch, classes)
    for level in progressive_levels(steps):
        new = level_pairs(level, patch)
        acc.add(new, np.concatenate([by_pair[tuple(p)] for p in new]))
        got = acc.finish_level(LABELS, level)
        own_pairs = shift_pairs(level, patch)
        own_logits = np.stack([by_pair[tuple(p)] for p in own_pairs])
        direct = SaliencyAccumulator(level, size, patch, classes)
        direct.add(own_pairs, own_logits.reshape(-1, classes))
        want = direct.finish(LABELS)
        assert got.steps == level
        for key in ("logits", "probabilities", "raw", "scaled", "patch_logits"):
            np.testing.assert_array_equal(getattr(got, key), getattr(want, key), err_msg=f"{key} S'={level}")
        ref = reference_maps_from_logits(own_logits, level, size, patch)
        for key in ("raw", "scaled"):
            err = np.abs(getattr(got, key) - ref[key]).max() / np.abs(ref[key]).max()
            assert err <= 1e-6, (key, level, err)
        # the unshifted copy's patch logits: row-major grid of shift (0, 0)
        np.testing.assert_array_equal(got.patch_logits, by_pair[(0, 0)].T.reshape(classes, grid, grid))
        np.testing.assert_allclose(got.patch_logits.mean(axis=(1, 2)), got.logits, rtol=1e-5, atol=1e-6)


def test_finish_level_needs_the_whole_level() -> None:
    acc = SaliencyAccumulator(4, 64, 16, 2)
    acc.add(level_pairs(1, 16), np.zeros((16, 2)))
    acc.finish_level(("a", "b"), 1)
    with pytest.raises(ValueError, match="level 2 of 4"):
        acc.finish_level(("a", "b"), 2)
    with pytest.raises(ValueError, match="offset"):
        SaliencyAccumulator(4, 64, 16, 2).finish_level(("a", "b"), 3)  # offsets of 3 do not nest in 4


@pytest.mark.parametrize("max_patches", [64, 256])
def test_each_level_equals_direct_predict_and_runs_every_shift_once(max_patches: int) -> None:
    steps = 8
    gray = noisy_image(150, 171, seed=max_patches)
    backend = PerPatchBackend(seed=1)
    edge = CxrEdge(backend, max_patches=max_patches)
    levels = []
    patches_before_first: int | None = None
    for pred in edge.predict_progressive(gray, steps=steps):
        if patches_before_first is None:
            patches_before_first = backend.patches_run
        levels.append(pred)
    assert [p.steps for p in levels] == [1, 2, 4, 8]
    grid2 = (IMAGE_SIZE // PATCH) ** 2
    assert patches_before_first == grid2  # the S=1 level waits for the unshifted copy only

    # the backend saw every patch of every shifted copy of S exactly once
    model_input = edge.prepare(gray).model_input
    expected = Counter(
        hashlib.sha1(p.tobytes()).digest() for p in tile_shifts(model_input, shift_pairs(steps, PATCH), PATCH)
    )
    assert backend.patches_run == steps * steps * grid2
    assert backend.seen == expected and max(expected.values()) == 1

    direct_edge = CxrEdge(PerPatchBackend(seed=1))
    for pred in levels:
        direct = direct_edge.predict(gray, steps=pred.steps)
        for key in ("logits", "probabilities", "raw", "scaled", "patch_logits"):
            np.testing.assert_array_equal(getattr(pred.maps, key), getattr(direct.maps, key), err_msg=key)
        assert pred.findings == direct.findings
        # and against the literal float64 reference
        ref = reference_saliency(model_input.astype(np.float64), backend.logits64, pred.steps, PATCH)
        for key in ("raw", "scaled"):
            assert np.abs(getattr(pred.maps, key) - ref[key]).max() <= 1e-5 * np.abs(ref[key]).max()
    assert set(levels[-1].timings_ms) == {"decode", "preprocess", "tile", "backend", "postprocess"}
    assert levels[-1].timings_ms["backend"] >= levels[0].timings_ms["backend"]


def test_progressive_on_onnxruntime_matches_direct_predict() -> None:
    """The bundled demo model (ONNX Runtime): batch composition differs from a direct predict,
    so equality is to float32 rounding of the patch logits."""
    from cxr_edge.assets import sample_image_path

    edge = CxrEdge.load()
    levels = list(edge.predict_progressive(sample_image_path(), steps=2))
    assert [p.steps for p in levels] == [1, 2]
    for pred in levels:
        direct = edge.predict(sample_image_path(), steps=pred.steps)
        for key in ("raw", "scaled", "patch_logits"):
            got, want = getattr(pred.maps, key), getattr(direct.maps, key)
            assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), key
        np.testing.assert_allclose(pred.maps.logits, direct.maps.logits, rtol=1e-5, atol=1e-4)


def test_stopping_early_closes_cleanly() -> None:
    backend = PerPatchBackend()
    gen = CxrEdge(backend).predict_progressive(noisy_image(128, 128, 0), steps=4)
    first = next(gen)
    gen.close()
    assert first.steps == 1 and backend.patches_run == (IMAGE_SIZE // PATCH) ** 2


def test_a_progressive_batch_on_a_server_is_refused_before_any_work(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cxr_edge.batch import run_batch
    from cxr_edge.errors import CxrEdgeError
    from cxr_edge.outputs import OutputOptions

    class ServerLike:  # a Predictor that is not the in-process CxrEdge
        metadata = CxrEdge.load().metadata

    out = tmp_path / "out"
    with pytest.raises(CxrEdgeError, match="progressive maps need the model in this process"):
        run_batch(ServerLike(), [tmp_path / "a.png"], OutputOptions(out), steps=2, progressive=True)  # type: ignore[arg-type]
    assert not out.exists()  # not even the output folder was made
