"""Tiling: cut every shifted copy of the model-frame image into its patches, in one fixed order.

Shift offsets (docs/model.md, "Shift averaging"): ``round(P*k/S)`` for k in 0..S-1, wrapped
into ``[-P/2, P/2)`` and sorted (P = patch_size, S = steps). All S*S pairs ``(dr, dc)`` are used.

Order, shared by every backend and postprocess (including the CUDA kernels):

- shift index ``k = i*S + j`` with ``(dr, dc) = (offsets[i], offsets[j])`` (row-major over
  the sorted offsets);
- within a shift, patch ``p = row*G + col`` (G = image_size // patch_size);
- patch-batch row ``k*G*G + p``.

Shifted copy: ``shifted[u, v] = image[u + dr, v + dc]``, zero outside the image (the reference
pads with P/2 zeros on every side and takes a window).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cxr_edge.errors import CxrEdgeError

#: Steps per patch S must nest (powers of two: the offsets of S are a subset of those of 2S)
#: and stay within one patch of the 64-pixel reference geometry.
VALID_STEPS = (1, 2, 4, 8, 16, 32, 64)


def check_steps(steps: object, patch_size: int | None = None) -> int:
    """``steps`` as an int if it is a power of two in 1..64 (and at most ``patch_size`` pixels,
    when given: each step is at least one pixel); else CxrEdgeError. The one place steps are checked."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or int(steps) not in VALID_STEPS:
        raise CxrEdgeError(None, f"steps must be a power of two in 1..64, got {steps!r}")
    if patch_size is not None and int(steps) > patch_size:
        raise CxrEdgeError(None, f"steps {steps} exceeds the model's patch size {patch_size}")
    return int(steps)


def shift_offsets(steps: int, patch_size: int) -> np.ndarray:
    """The S sorted shift offsets in pixels: ``(S,) int64`` in ``[-P/2, P/2)``.

    Powers of two nest: the offsets for S are a subset of those for 2S.
    """
    if not 1 <= steps <= patch_size:
        raise ValueError(f"steps must be in 1..{patch_size}, got {steps}")
    half = patch_size // 2
    # np.round rounds half to even like Python's round(), which the reference uses.
    raw = np.round(patch_size * np.arange(steps, dtype=np.float64) / steps).astype(np.int64)
    return np.sort(((raw + half) % patch_size) - half)


def shift_pairs(steps: int, patch_size: int) -> np.ndarray:
    """All S*S shifts as ``(S*S, 2) int64`` rows ``(dr, dc)``, row-major: ``k = i*S + j``."""
    offsets = shift_offsets(steps, patch_size)
    dr, dc = np.meshgrid(offsets, offsets, indexing="ij")
    return np.stack([dr.ravel(), dc.ravel()], axis=1)


def offset_index(values: np.ndarray, steps: int, patch_size: int) -> np.ndarray:
    """Index ``i`` of each pixel offset of ``values`` in ``shift_offsets(steps, patch_size)``:
    ``(n,) int64``. ValueError naming the first value that is not one of those offsets."""
    offsets = shift_offsets(steps, patch_size)
    values = np.asarray(values)
    idx = np.minimum(np.searchsorted(offsets, values), steps - 1)
    wrong = offsets[idx] != values
    if wrong.any():
        raise ValueError(
            f"offset {values[wrong][0]} is not one of the {steps}-step offsets {offsets.tolist()}"
        )
    return idx.astype(np.int64, copy=False)


def shift_index(pairs: np.ndarray, steps: int, patch_size: int) -> np.ndarray:
    """Shift index ``k = i*S + j`` (``shift_pairs`` order) of each row ``(dr, dc)`` of ``pairs
    (K, 2)``: ``(K,) int64``. ValueError (``offset_index``) for a shift that is not one of S's."""
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be (K, 2), got shape {pairs.shape}")
    rows = offset_index(pairs[:, 0], steps, patch_size)
    cols = offset_index(pairs[:, 1], steps, patch_size)
    index: np.ndarray = rows * steps + cols
    return index


def progressive_levels(steps: int) -> tuple[int, ...]:
    """The levels a progressive run of ``steps`` S passes through: 1, 2, 4, ..., S."""
    steps = check_steps(steps)
    return tuple(1 << i for i in range(steps.bit_length()))


def level_pairs(level: int, patch_size: int) -> np.ndarray:
    """The shifts level ``level`` adds to level ``level // 2`` (all of them for level 1):
    ``(K, 2) int64`` rows ``(dr, dc)`` in ``shift_pairs(level)`` order. Over the levels 1 .. S
    they are the S*S shifts of S, each exactly once (powers of two nest)."""
    pairs = shift_pairs(level, patch_size)
    if level == 1:
        return pairs
    coarse = set(shift_offsets(level // 2, patch_size).tolist())
    old = np.isin(pairs[:, 0], list(coarse)) & np.isin(pairs[:, 1], list(coarse))
    return pairs[~old]


def _check_image(image: np.ndarray, patch_size: int) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2 or image.shape[0] != image.shape[1] or image.shape[0] % patch_size:
        raise ValueError(
            f"image must be square (H, H) with H a multiple of {patch_size}, got shape {image.shape}"
        )
    return image.astype(np.float32, copy=False)


def _check_pairs(pairs: np.ndarray, patch_size: int) -> np.ndarray:
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be (K, 2), got shape {pairs.shape}")
    half = patch_size // 2
    if pairs.size and (pairs.min() < -half or pairs.max() >= half):
        raise ValueError(f"shift offsets must lie in [{-half}, {half})")
    return pairs.astype(np.int64, copy=False)


def _pad(image: np.ndarray, patch_size: int) -> np.ndarray:
    half = patch_size // 2
    return np.pad(image, half, mode="constant")


def _tile_padded(
    padded: np.ndarray, pairs: np.ndarray, patch_size: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Patches of the shifted windows of an already padded image: ``(K*G*G, 1, P, P) float32``."""
    half = patch_size // 2
    size = padded.shape[0] - 2 * half
    grid = size // patch_size
    shape = (len(pairs) * grid * grid, 1, patch_size, patch_size)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}")
    by_shift = out.reshape(len(pairs), grid, grid, patch_size, patch_size)
    for k, (dr, dc) in enumerate(pairs):
        window = padded[dr + half : dr + half + size, dc + half : dc + half + size]
        # (G*P, G*P) -> (G, P, G, P) -> (G, G, P, P): patch (row, col), copied once into place.
        by_shift[k] = window.reshape(grid, patch_size, grid, patch_size).transpose(0, 2, 1, 3)
    return out


def tile_shifts(
    image: np.ndarray, pairs: np.ndarray, patch_size: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Patches of the given shifted copies.

    image: ``(H, H) float32`` model-frame image (H a multiple of patch_size).
    pairs: ``(K, 2)`` int shifts ``(dr, dc)`` in ``[-P/2, P/2)``.
    out: optional ``(K*G*G, 1, P, P) float32`` buffer to fill; reusing one skips the page
    faults of a fresh 64 MB allocation at S=8 (about half the time).
    Returns ``(K*G*G, 1, P, P) float32``, row ``k*G*G + row*G + col``.
    """
    image = _check_image(image, patch_size)
    pairs = _check_pairs(pairs, patch_size)
    return _tile_padded(_pad(image, patch_size), pairs, patch_size, out)


@dataclass(frozen=True)
class PatchBatch:
    """A chunk of whole shifted copies.

    patches: ``(K*G*G, 1, P, P) float32``; pairs: ``(K, 2) int64`` their shifts;
    first_shift: global shift index k of ``pairs[0]`` in the order of ``shift_pairs``.
    """

    patches: np.ndarray
    pairs: np.ndarray
    first_shift: int


def iter_patch_batches(
    image: np.ndarray, steps: int, patch_size: int, max_patches: int, pairs: np.ndarray | None = None
) -> Iterator[PatchBatch]:
    """Yield all S*S shifted copies in order, at most ``max_patches`` patches per batch.

    Each batch holds whole shifts (``max_patches // (G*G)`` of them), so memory stays bounded
    for any S; ``max_patches`` must be at least G*G. ``pairs``: only these shifts of S, in this
    order (e.g. ``level_pairs``); their batches need not be consecutive shifts, so only an
    accumulator's ``add(pairs, logits)`` may take them (``first_shift`` is that of ``pairs[0]``).
    """
    image = _check_image(image, patch_size)
    per_shift = (image.shape[0] // patch_size) ** 2
    if max_patches < per_shift:
        raise ValueError(f"max_patches must be at least one shift ({per_shift} patches), got {max_patches}")
    shifts_per_batch = max_patches // per_shift
    if pairs is None:
        pairs = shift_pairs(steps, patch_size)
        index = np.arange(len(pairs))
    else:
        pairs = _check_pairs(pairs, patch_size)
        index = shift_index(pairs, steps, patch_size)
    padded = _pad(image, patch_size)
    for first in range(0, len(pairs), shifts_per_batch):
        chunk = pairs[first : first + shifts_per_batch]
        yield PatchBatch(
            patches=_tile_padded(padded, chunk, patch_size), pairs=chunk, first_shift=int(index[first])
        )
