"""Image-like patches for BatchNorm calibration and export parity checks (no real data needed).

Chest phantoms (``cxr_edge.phantoms``: body, lungs, heart, ribs, findings, noise) are cut into
patches at random positions, so the inputs have the intensity statistics and edges of an X-ray
rather than white noise.
"""

from __future__ import annotations

import numpy as np


def chest_image(size: int, seed: int) -> np.ndarray:
    """A chest phantom ``(size, size) float32 in [0, 1]`` (bright = dense), deterministic in ``seed``."""
    from cxr_edge.phantoms import render_phantom

    image: np.ndarray = render_phantom(seed, size=size).image.astype(np.float32) / 255.0
    return image


def image_like_patches(count: int, patch_size: int = 64, seed: int = 0, image_size: int = 512) -> np.ndarray:
    """``count`` patches of synthetic chests: ``(count, 1, P, P) float32 in [0, 1]``.

    Positions are random over the image padded with P/2 zeros on every side, the same range the
    shifted copies of the runtime cover, so border patches carry their zero padding as there.
    """
    rng = np.random.default_rng(seed)
    pad = patch_size // 2
    images = [
        np.pad(chest_image(image_size, seed * 1000 + i), pad) for i in range(max(1, min(4, count // 16)))
    ]
    out = np.empty((count, 1, patch_size, patch_size), dtype=np.float32)
    for n in range(count):
        image = images[n % len(images)]
        top, left = rng.integers(0, image_size + 2 * pad - patch_size + 1, size=2)
        out[n, 0] = image[top : top + patch_size, left : left + patch_size]
    return out
