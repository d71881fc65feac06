"""An independent, literal float64 numpy implementation of docs/model.md's patch and saliency math.

Written straight from that page, slow on purpose and sharing no code with ``cxr_edge``: pad with
P/2 zeros, take each shifted window, cut patches row-major, classify, repeat each patch value
over its P x P pixels, shift back with zeros outside, average over S*S. Tests compare the
product against this. Keep image sizes small in tests (e.g. 128 with patch 16) for speed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

PatchFn = Callable[[np.ndarray], np.ndarray]
"""(64, P, P) float64 patches of one shifted copy -> (64, C) float64 patch logits."""


def reference_offsets(steps: int, patch_size: int = 64) -> list[int]:
    """round(P*k/S) for k in 0..S-1, wrapped into [-P/2, P/2), sorted."""
    half = patch_size // 2
    offsets = []
    for k in range(steps):
        o = round(patch_size * k / steps)
        offsets.append(((o + half) % patch_size) - half)
    return sorted(offsets)


def reference_pairs(steps: int, patch_size: int = 64) -> list[tuple[int, int]]:
    """All (dr, dc), dr over the sorted offsets in the outer loop."""
    offsets = reference_offsets(steps, patch_size)
    return [(dr, dc) for dr in offsets for dc in offsets]


def reference_shifted(image: np.ndarray, dr: int, dc: int, patch_size: int = 64) -> np.ndarray:
    """Pad with P/2 zeros on every side, take rows dr+P/2 .. and columns dc+P/2 .. of size H."""
    half = patch_size // 2
    size = image.shape[0]
    padded = np.zeros((size + 2 * half, size + 2 * half), dtype=np.float64)
    padded[half : half + size, half : half + size] = image
    window: np.ndarray = padded[dr + half : dr + half + size, dc + half : dc + half + size].copy()
    return window


def reference_patches(shifted: np.ndarray, patch_size: int = 64) -> np.ndarray:
    """Cut a (H, H) image into its (G*G, P, P) patches, patch index row*G + col."""
    grid = shifted.shape[0] // patch_size
    patches = []
    for row in range(grid):
        for col in range(grid):
            patches.append(
                shifted[row * patch_size : (row + 1) * patch_size, col * patch_size : (col + 1) * patch_size]
            )
    return np.array(patches, dtype=np.float64)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def reference_shift_back(
    patch_values: np.ndarray, dr: int, dc: int, image_size: int, patch_size: int = 64
) -> np.ndarray:
    """``(G*G, C)`` values of one copy's patches -> ``(C, H, W)`` float64 on the image.

    Each value over its P x P pixels, then back[y, x] = patchmap[y - dr, x - dc], zero outside.
    """
    grid = image_size // patch_size
    patch_values = np.asarray(patch_values, dtype=np.float64)
    half = patch_size // 2
    out = np.zeros((patch_values.shape[1], image_size, image_size))
    for c in range(patch_values.shape[1]):
        patchmap = patch_values[:, c].reshape(grid, grid)
        patchmap = np.repeat(np.repeat(patchmap, patch_size, axis=0), patch_size, axis=1)
        # pad, then take the window moved the other way
        padded = np.zeros((image_size + 2 * half, image_size + 2 * half))
        padded[half : half + image_size, half : half + image_size] = patchmap
        out[c] = padded[half - dr : half - dr + image_size, half - dc : half - dc + image_size]
    return out


def reference_maps_from_logits(
    patch_logits: np.ndarray, steps: int, image_size: int, patch_size: int = 64
) -> dict[str, np.ndarray]:
    """Maps from given patch logits.

    patch_logits: ``(S*S, G*G, C)`` float, shift k in ``reference_pairs`` order, patch row*G + col.
    Returns ``logits (C,)`` (the (0, 0) copy's image logit), ``probabilities (C,)``,
    ``raw`` and ``scaled`` ``(C, H, W)`` float64.
    """
    pairs = reference_pairs(steps, patch_size)
    patch_logits = np.asarray(patch_logits, dtype=np.float64)
    num_classes = patch_logits.shape[-1]
    raw_sum = np.zeros((num_classes, image_size, image_size))
    scaled_sum = np.zeros((num_classes, image_size, image_size))
    image_logits = None
    for k, (dr, dc) in enumerate(pairs):
        logits = patch_logits[k]  # (G*G, C)
        shift_image_logit = logits.mean(axis=0)  # (C,)
        if (dr, dc) == (0, 0):
            image_logits = shift_image_logit
        back = reference_shift_back(logits, dr, dc, image_size, patch_size)
        for c in range(num_classes):
            raw_sum[c] += back[c]
            scaled_sum[c] += back[c] * sigmoid(shift_image_logit[c])
    n = len(pairs)
    assert image_logits is not None
    return {
        "logits": image_logits,
        "probabilities": sigmoid(image_logits),
        "raw": raw_sum / n,
        "scaled": scaled_sum / n,
    }


def reference_patch_logits(
    image: np.ndarray, patch_fn: PatchFn, steps: int, patch_size: int = 64
) -> np.ndarray:
    """Classify every patch of every shifted copy: ``(S*S, G*G, C)`` float64."""
    image = np.asarray(image, dtype=np.float64)
    out = []
    for dr, dc in reference_pairs(steps, patch_size):
        patches = reference_patches(reference_shifted(image, dr, dc, patch_size), patch_size)
        out.append(np.asarray(patch_fn(patches), dtype=np.float64))
    return np.array(out)


def reference_saliency(
    image: np.ndarray, patch_fn: PatchFn, steps: int, patch_size: int = 64
) -> dict[str, np.ndarray]:
    """Full reference for a model-frame image ``(H, H)`` in [0, 1]: see ``reference_maps_from_logits``."""
    logits = reference_patch_logits(image, patch_fn, steps, patch_size)
    return reference_maps_from_logits(logits, steps, image.shape[0], patch_size)


def reference_published_scaled_map(
    patch_logits: np.ndarray, steps: int, image_size: int, patch_size: int = 64, batch_size: int = 4
) -> np.ndarray:
    """The public code's batched scaled map, emulated op by op in float64 numpy: ``(C, H, W)``.

    patch_logits: ``(S*S, G*G, C)`` in ``reference_pairs`` order. Per DataLoader batch of b copies,
    image probabilities ``(b, C)`` are expanded to ``(b, 1, 1, C)`` and multiplied with the
    ``(b, G*G, C)`` patch logits, which broadcasts to ``(b, b, G*G, C)``; the batches are
    concatenated, read as a list of ``(G*G, C)`` blocks, and the first S*S blocks are shifted
    back to the S*S offsets in order and averaged.
    """
    patch_logits = np.asarray(patch_logits, dtype=np.float64)
    pairs = reference_pairs(steps, patch_size)
    count = len(pairs)
    blocks = []
    for first in range(0, count, batch_size):
        raw = patch_logits[first : first + batch_size]  # (b, G*G, C)
        prob = sigmoid(raw.mean(axis=1))  # (b, C)
        blocks.append(raw * prob[:, None, None, :])  # -> (b, b, G*G, C)
    features = np.concatenate(blocks)  # fails, like torch.cat, when the last batch is smaller
    entries = features.reshape(-1, patch_logits.shape[1], patch_logits.shape[2])
    total = np.zeros((patch_logits.shape[2], image_size, image_size))
    for e, (dr, dc) in enumerate(pairs):
        total += reference_shift_back(entries[e], dr, dc, image_size, patch_size)
    return total / count
