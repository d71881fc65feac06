"""Image-like patches for BatchNorm calibration and export parity checks (no real data needed).

Synthetic chest radiographs (``cxr_edge.phantoms`` when present, else the small generator
below: body, dark lungs, bright mediastinum and spine, rib arcs, noise) are cut into patches
at random positions, so the inputs have the intensity statistics and edges of an X-ray
rather than white noise.
"""

from __future__ import annotations

import numpy as np


def _smooth(field: np.ndarray, passes: int) -> np.ndarray:
    """Cheap separable box blur (3-tap, repeated) so the image has no pixel-level white noise."""
    out = field
    for _ in range(passes):
        out = (np.roll(out, 1, 0) + out + np.roll(out, -1, 0)) / 3.0
        out = (np.roll(out, 1, 1) + out + np.roll(out, -1, 1)) / 3.0
    return out


def synthetic_chest(size: int = 512, seed: int = 0) -> np.ndarray:
    """A chest-like radiograph: ``(size, size) float32 in [0, 1]`` (bright = dense), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size  # both in [0, 1)
    jitter = rng.uniform(-0.03, 0.03, size=6)

    def ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        r = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
        inside: np.ndarray = np.sqrt(np.clip(1.0 - r, 0.0, 1.0))
        return inside

    body = ellipse(0.55 + jitter[0], 0.5, 0.6, 0.46)
    lungs = ellipse(0.45 + jitter[1], 0.3 + jitter[2], 0.3, 0.15) + ellipse(0.45 + jitter[3], 0.7, 0.3, 0.15)
    heart = ellipse(0.62, 0.55 + jitter[4], 0.16, 0.17)
    spine = np.exp(-(((x - 0.5 - jitter[5]) / 0.04) ** 2)) * (y > 0.1)
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * (y * 11 + 2.5 * (x - 0.5) ** 2))
    image = 0.15 + 0.6 * body - 0.45 * lungs + 0.35 * heart + 0.25 * spine + 0.12 * ribs * (lungs > 0)
    image += 0.08 * _smooth(rng.standard_normal((size, size)), 12)  # soft tissue texture
    image += 0.02 * rng.standard_normal((size, size))  # film / detector noise
    image[: size // 40, : size // 6] = 0.95  # a burned-in text marker, as real films have
    clipped: np.ndarray = np.clip(image, 0.0, 1.0).astype(np.float32)
    return clipped


def chest_image(size: int, seed: int) -> np.ndarray:
    """A synthetic chest ``(size, size) float32 in [0, 1]``: a phantom if available, else ``synthetic_chest``."""
    try:
        from cxr_edge.phantoms import render_phantom
    except ImportError:
        return synthetic_chest(size, seed)
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
