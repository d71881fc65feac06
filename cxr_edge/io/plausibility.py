"""Could these pixels be a frontal chest radiograph at all? Cheap checks with a stated reason.

The model classifies any array it is given, so the pipeline refuses decoded files that cannot
be what it was trained on (``image_problem``) and, for PNG/JPEG, whose header says nothing
about what they show, runs one cheap look at the pixels (``chest_tone_problem``).

``image_problem`` (always refused; ``PlausibilityLimits`` sets the numbers):
- short side under ``min_side`` (256 px): a 1x1 or 3x60000 image has no anatomy to classify;
- aspect ratio over ``max_aspect`` (3:1): the centre crop would keep a sliver;
- near-constant: 98% of pixels within ``min_spread`` (8) grey levels (uniform black/white);
- noise-like: neighbouring pixels uncorrelated (r < ``min_neighbour_correlation``, 0.5), as in
  random noise; radiographs are smooth at the pixel scale (r >= 0.9 on every real film we have).

``chest_tone_problem`` (refused unless ``allow_non_chest``): a radiograph's tones spread
over the middle greys; a CT slice in a lung or soft-tissue window is nearly black and white.
Measured on ../shared/data/cxr (64 x 64 area-averaged image, tones normalised to its 1st..99th
percentile, share of pixels between 0.3 and 0.7): 205 frontal radiographs 0.232 .. 0.633, the
3 CT slices 0.052, 0.105, 0.193, the 5 laterals 0.392 .. 0.499. With the cut at 0.20 no frontal
image is flagged and all 3 CT slices are. It cannot catch lateral views (their tones are a
radiograph's), radiographs of other body parts, rotated or flipped films, or a CT in a wide
window: it is a guard against the grossest mix-ups, not a view classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PlausibilityLimits:
    """Numbers for ``image_problem`` and ``chest_tone_problem`` (see the module docstring)."""

    min_side: int = 256
    max_aspect: float = 3.0
    min_spread: int = 8
    min_neighbour_correlation: float = 0.5
    min_mid_tone_share: float = 0.20


def _thumbnail(gray: np.ndarray, size: int = 64) -> np.ndarray:
    import cv2

    small: np.ndarray = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA).astype(np.float64)
    return small


def _neighbour_correlation(gray: np.ndarray) -> float:
    """Pearson r of horizontally adjacent pixels, on at most ~256 evenly spaced rows."""
    step = max(1, gray.shape[0] // 256)
    rows = gray[::step].astype(np.float64)
    a, b = rows[:, :-1].ravel(), rows[:, 1:].ravel()
    a -= a.mean()
    b -= b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 1.0


def image_problem(gray: np.ndarray, limits: PlausibilityLimits | None = None) -> str | None:
    """Why ``gray`` (h, w) uint8 cannot be a radiograph to classify, or None."""
    limits = limits or PlausibilityLimits()
    h, w = gray.shape
    if min(h, w) < limits.min_side:
        return f"image is {w} x {h} pixels; the short side must be at least {limits.min_side}"
    if max(h, w) > limits.max_aspect * min(h, w):
        return f"image is {w} x {h} pixels, aspect ratio {max(h, w) / min(h, w):.1f}:1 (at most {limits.max_aspect:g}:1)"
    low, high = np.percentile(gray[:: max(1, h // 512), :: max(1, w // 512)], [1, 99])
    if high - low < limits.min_spread:
        return f"near-constant image (98% of its pixels span {int(high - low)} of 255 grey levels): nothing to classify"
    r = _neighbour_correlation(gray)
    if r < limits.min_neighbour_correlation:
        return f"noise-like image (neighbouring pixels correlate r = {r:.2f}; radiographs are smooth)"
    return None


def mid_tone_share(gray: np.ndarray) -> float:
    """Share of pixels of the 64 x 64 area-averaged image between 0.3 and 0.7 of its
    1st..99th percentile range (see the module docstring)."""
    small = _thumbnail(gray)
    low, high = np.percentile(small, [1, 99])
    unit = (small - low) / max(high - low, 1e-9)
    return float(((unit > 0.3) & (unit < 0.7)).mean())


def chest_tone_problem(gray: np.ndarray, limits: PlausibilityLimits | None = None) -> str | None:
    """Why ``gray`` looks like a CT slice rather than a radiograph, or None (module docstring)."""
    limits = limits or PlausibilityLimits()
    share = mid_tone_share(gray)
    if share < limits.min_mid_tone_share:
        return (
            f"not like a radiograph: only {share:.0%} of the image is mid-grey (radiographs >= "
            f"{limits.min_mid_tone_share:.0%}; CT slices are nearly black and white)"
        )
    return None
