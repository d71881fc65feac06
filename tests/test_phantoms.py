"""Chest phantoms: determinism, shapes, and that masks mark pixels the finding really changed."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_edge.metadata import CHEXPERT_LABELS
from cxr_edge.phantoms import PHANTOM_LABELS, render_phantom

SIZE = 256  # small for speed; findings are drawn in normalised units so they scale


def test_labels_are_a_chexpert_subset_in_chexpert_order():
    positions = [CHEXPERT_LABELS.index(label) for label in PHANTOM_LABELS]
    assert positions == sorted(positions)
    assert len(PHANTOM_LABELS) == 6


def test_same_seed_same_phantom_and_different_seed_differs():
    a, b, c = render_phantom(3, size=SIZE), render_phantom(3, size=SIZE), render_phantom(4, size=SIZE)
    assert np.array_equal(a.image, b.image)
    assert a.labels == b.labels
    assert all(np.array_equal(a.masks[k], b.masks[k]) for k in PHANTOM_LABELS)
    assert not np.array_equal(a.image, c.image)


def test_shapes_dtypes_and_mask_iff_label():
    for seed in range(6):
        p = render_phantom(seed, size=SIZE, vary_shape=seed % 2 == 1)
        h, w = p.image.shape
        assert p.image.dtype == np.uint8 and h == SIZE and 0.8 * SIZE <= w <= 1.25 * SIZE
        assert set(p.labels) == set(PHANTOM_LABELS) == set(p.masks)
        for label in PHANTOM_LABELS:
            m = p.masks[label]
            assert m.shape == (h, w) and m.dtype == bool
            assert m.any() == bool(p.labels[label]), (seed, label)
        assert p.label_vector().tolist() == [float(p.labels[k]) for k in PHANTOM_LABELS]


def test_image_has_chest_like_contrast():
    """Lungs are darker than the mediastinum column, air outside the body darkest of all."""
    p = render_phantom(0, size=SIZE, prevalence=0.0)
    img = p.image.astype(np.float64)
    s = SIZE
    centre = img[int(0.3 * s) : int(0.5 * s), int(0.47 * s) : int(0.53 * s)].mean()
    lungs = np.concatenate(
        [
            img[int(0.3 * s) : int(0.5 * s), int(0.27 * s) : int(0.33 * s)],
            img[int(0.3 * s) : int(0.5 * s), int(0.67 * s) : int(0.73 * s)],
        ]
    ).mean()
    assert centre > lungs + 20
    assert 0 < img.std()


@pytest.mark.parametrize("label", PHANTOM_LABELS)
def test_a_planted_finding_changes_the_pixels_inside_its_mask(label):
    """Same seed with only ``label`` forced on vs. nothing: the pixels change inside the mask
    (visible: mean |difference| >= 6 grey levels) and hardly anywhere else (a blur margin aside)."""
    import cv2

    none = {k: 0 for k in PHANTOM_LABELS}
    for seed in range(4):
        base = render_phantom(seed, size=SIZE, findings=none)
        with_finding = render_phantom(seed, size=SIZE, findings={**none, label: 1})
        mask = with_finding.masks[label]
        assert mask.any() and not base.masks[label].any()
        area = mask.mean()
        assert 0.0005 < area < 0.25, area
        diff = np.abs(with_finding.image.astype(np.float64) - base.image.astype(np.float64))
        margin = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        inside, outside = diff[mask].mean(), diff[~margin].mean()
        assert inside >= 6.0, (seed, inside)
        assert inside > 4 * outside, (seed, inside, outside)
        # findings stay away from the frame edge, so the centre crop and the patch grid see them
        rows, cols = np.nonzero(mask)
        assert rows.min() > 0.03 * SIZE and rows.max() < 0.97 * SIZE
        assert cols.min() > 0.03 * SIZE and cols.max() < 0.97 * SIZE


def test_prevalence_controls_labels():
    none = [render_phantom(s, size=64, prevalence=0.0) for s in range(5)]
    assert all(not any(p.labels.values()) for p in none)
    every = [render_phantom(s, size=64, prevalence=1.0) for s in range(3)]
    assert all(all(p.labels.values()) for p in every)


def load_train_demo():
    from tool_modules import load_tool

    return load_tool("train_demo")


def test_training_patch_targets_match_shifted_masks():
    """tools/train_demo.py derives per-patch targets from cached cell counts; check them against
    shifting the pixel mask directly (out[u, v] = mask[u + dr, v + dc], zero outside)."""
    train_demo = load_train_demo()

    size, patch, cell = 128, 32, train_demo.CELL
    masks = np.zeros((3, 1, size, size), bool)
    masks[0, 0, 20:50, 40:90] = True  # spans patches
    masks[1, 0, 3:7, 3:7] = True  # tiny, near the corner
    masks[2, 0, 60:63, 60:63] = True  # tiny, central
    n = size // cell
    cells = masks.reshape(3, 1, n, cell, n, cell).sum(axis=(3, 5)).astype(np.uint8)
    shifts = np.array([[-16, 8], [8, -16], [0, 0]])
    targets, weights = train_demo.patch_targets(cells, shifts, patch)
    g = size // patch
    for i, (dr, dc) in enumerate(shifts):
        padded = np.pad(masks[i, 0], patch // 2)
        shifted = padded[patch // 2 + dr : patch // 2 + dr + size, patch // 2 + dc : patch // 2 + dc + size]
        cover = shifted.reshape(g, patch, g, patch).sum(axis=(1, 3)).ravel().astype(np.float64)
        positive = (cover / patch**2 >= 0.05) | (cover / masks[i].sum() >= 0.25)
        assert np.array_equal(targets[i * g * g : (i + 1) * g * g, 0], positive.astype(np.float32))
        assert np.array_equal(
            weights[i * g * g : (i + 1) * g * g, 0], (positive | (cover == 0)).astype(np.float32)
        )
    assert targets[:, 0].sum() >= 3


def test_sampled_training_patches_carry_their_own_targets():
    """Each sampled patch's targets must follow from the mask pixels inside that very patch: with
    the image equal to the mask (255 inside), a patch's pixel sum is its finding coverage."""
    train_demo = load_train_demo()
    size, patch, cell = 128, 32, train_demo.CELL
    masks = np.zeros((4, 1, size, size), bool)
    masks[0, 0, 10:40, 90:120] = True
    masks[1, 0, 0:6, 0:6] = True  # at the corner: patches reach into the zero fill
    masks[2, 0, 64:67, 30:33] = True
    images = masks[:, 0].astype(np.uint8) * 255
    cells = masks.reshape(4, 1, size // cell, cell, size // cell, cell).sum(axis=(3, 5)).astype(np.uint8)
    targets = masks.reshape(4, 1, -1).any(-1).astype(np.float32)
    patches, t, w = train_demo.sample_patches(images, cells, targets, 64, patch, np.random.default_rng(0))
    assert patches.shape == (64, patch, patch) and patches.dtype == np.uint8
    cover = patches.reshape(64, -1).sum(-1, dtype=np.int64)[:, None] / 255.0
    areas = {int(m.sum()) for m in masks}
    assert any(t[:, 0] == 1) and any(t[:, 0] == 0)
    # the patch came from one image; its target must match that image's area for some image
    for k in range(64):
        options = [
            train_demo.coverage_targets(cover[k : k + 1], np.array([[a]], float), patch) for a in areas
        ]
        assert any(np.array_equal(o[0][0], t[k]) and np.array_equal(o[1][0], w[k]) for o in options)


def test_an_enlarged_heart_is_a_denser_shadow():
    """Attenuation follows the heart's depth, which grows with its width, so cardiomegaly is
    visible inside a single patch too (brighter heart centre), not only in the heart's extent."""
    none = {k: 0 for k in PHANTOM_LABELS}
    for seed in range(4):
        normal = render_phantom(seed, size=SIZE, findings=none)
        enlarged = render_phantom(seed, size=SIZE, findings={**none, "Cardiomegaly": 1})
        heart = enlarged.masks["Cardiomegaly"]
        rows, cols = np.nonzero(heart)
        r, c = int(rows.mean()), int(cols.mean())
        centre = (slice(r - 3, r + 4), slice(c - 3, c + 4))
        assert enlarged.image[centre].mean() > normal.image[centre].mean() + 5, seed
