"""Patch logits -> image logits and shift-averaged saliency maps (numpy; the oracle for the CUDA kernels).

For every shift ``(dr, dc)`` the patch-logit map (each patch value over its P x P pixels) is
shifted back (``map[y, x] = patchmap[y - dr, x - dc]``, zero outside) and the S*S maps are
averaged. ``raw`` averages the patch logits; ``scaled`` averages patch logit x sigmoid(image logit
of that same shifted copy). Image logits reported are those of the unshifted (0, 0) copy.
The definitions: docs/model.md, "Raw and scaled patch maps" and "Shift averaging".

Algorithm, cost O(patches*C + pixels*C) instead of O(S*S*pixels*C): a shifted patch map is
piecewise constant, so its 2-D difference is non-zero only at the (G+1)^2 corners
``(i*P + dr, j*P + dc)`` of its patch grid. Over all shifts these corners lie on one compact
grid of ((G+1)*S)^2 positions, already in increasing pixel order; the corner differences form a
difference image on that grid, 2-D cumulative sums rebuild the summed map cell by cell, and each
cell is repeated over its pixels (clipped to the image). This is the pixel-grid "corner scatter
+ prefix sums" with the empty rows/columns between corners left out. float64 throughout; the
per-cell values are cast to float32 before they are repeated over pixels.

Progressive refinement: the offsets of a power-of-two S' <= S are a subset of those of S, so
``finish_level(labels, S')`` builds the maps of level S' from the shifts of S' alone (the
same numbers ``SaliencyAccumulator(S', ...)`` fed with those shifts would produce), while the
shifts of finer levels are still being added.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from cxr_edge.errors import CxrEdgeError
from cxr_edge.tile import offset_index, shift_index, shift_offsets, shift_pairs

#: The two saliency maps of an image: ``raw`` (mean patch logit) and ``scaled`` (mean of patch
#: logit x sigmoid of its copy's image logit).
MAP_KINDS: tuple[str, ...] = ("raw", "scaled")


def check_map_kind(kind: str, what: str = "map") -> str:
    """``kind`` if it names one of ``MAP_KINDS``, else CxrEdgeError naming ``what`` (e.g. "--map")."""
    if kind not in MAP_KINDS:
        raise CxrEdgeError(None, f"{what} must be one of {', '.join(MAP_KINDS)}, got {kind!r}")
    return kind


@dataclass(frozen=True)
class SaliencyMaps:
    """Image-level outputs and smooth maps for one image, in the model frame (H = W = image_size).

    logits, probabilities: ``(C,) float32`` of the unshifted image.
    raw, scaled: ``(C, H, W) float32`` in logit units.
    patch_logits: ``(C, G, G) float32``, the unshifted copy's patch logits (patch row, col of
    the G x G grid): the exact terms of the image logit, ``logits == patch_logits.mean((1, 2))``.
    """

    steps: int
    labels: tuple[str, ...]
    logits: np.ndarray
    probabilities: np.ndarray
    raw: np.ndarray
    scaled: np.ndarray
    patch_logits: np.ndarray

    def map(self, kind: str) -> np.ndarray:
        """The ``(C, H, W) float32`` maps of one of ``MAP_KINDS``."""
        maps: np.ndarray = self.raw if check_map_kind(kind) == "raw" else self.scaled
        return maps


@runtime_checkable
class Accumulator(Protocol):
    """Turns one image's patch logits into ``SaliencyMaps``: ``SaliencyAccumulator`` (numpy, the
    oracle) or ``cxr_edge.cuda.GpuPostprocess``. The pipeline opens one per image and closes it,
    unless it is a ``ReusableAccumulator``."""

    def add(self, pairs: np.ndarray, logits: np.ndarray) -> None:
        """Host patch logits ``(K*G*G, C)`` of the K whole shifts ``pairs (K, 2)``."""
        ...

    def finish(self, labels: Sequence[str]) -> SaliencyMaps: ...

    def close(self) -> None:
        """Release what the accumulator holds (device memory); idempotent."""
        ...


@runtime_checkable
class ReusableAccumulator(Accumulator, Protocol):
    """An accumulator that serves image after image of one S (its buffers are costly to make:
    device memory, streams); the pipeline keeps a pool of them for the model's life."""

    def reset(self) -> None:
        """Forget the last image, keep the buffers."""
        ...


@runtime_checkable
class DeviceAccumulator(Accumulator, Protocol):
    """An accumulator whose logits buffer lives on the GPU, so an engine can write into it."""

    def logits_address(self, first_shift: int = 0) -> int:
        """Device address of the ``(G*G, C)`` logit rows of shift ``first_shift`` onwards."""
        ...

    def mark_written(self, first_shift: int, count: int) -> None:
        """Declare that shifts ``first_shift .. first_shift + count - 1`` were written on the device."""
        ...

    def wait_for(self, stream: int) -> None:
        """Order the postprocess after everything enqueued on ``stream`` so far (the engine's
        stream records an event, the postprocess's stream waits for it); no host sync."""
        ...


#: ``factory(steps, image_size, patch_size, num_classes) -> Accumulator``.
AccumulatorFactory = Callable[[int, int, int, int], Accumulator]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, stable for large |x| (no overflow warnings)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    out: np.ndarray = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return out


class SaliencyAccumulator:
    """Collects patch logits of all S*S shifts (chunks in any order), then builds the maps.

    Memory: the patch logits themselves, ``S*S*G*G*C`` float64 (29 MB at S=64, C=14).
    Not thread-safe; use one accumulator per image.
    """

    def __init__(self, steps: int, image_size: int, patch_size: int, num_classes: int) -> None:
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.steps = steps
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.grid = image_size // patch_size
        self.offsets = shift_offsets(steps, patch_size)
        # (C, G, S, G, S): patch logits by (class, patch row, row-offset index, patch col,
        # col-offset index). Row axes (i, a) run in increasing pixel position i*P + offsets[a],
        # so the corner grid in _smooth needs no transpose.
        self._logits = np.zeros((num_classes, self.grid, steps, self.grid, steps), dtype=np.float64)
        self._seen = np.zeros((steps, steps), dtype=bool)

    def _offset_index(self, values: np.ndarray) -> np.ndarray:
        idx = np.minimum(np.searchsorted(self.offsets, values), self.steps - 1)
        wrong = self.offsets[idx] != values
        if wrong.any():
            raise ValueError(
                f"offset {values[wrong][0]} is not one of the {self.steps}-step offsets {self.offsets.tolist()}"
            )
        return idx

    def add(self, pairs: np.ndarray, logits: np.ndarray) -> None:
        """Record patch logits of K whole shifts.

        pairs: ``(K, 2)`` int shifts ``(dr, dc)``; logits: ``(K*G*G, C)`` float, row ``k*G*G + p``.
        """
        pairs = np.asarray(pairs)
        logits = np.asarray(logits)
        g, c = self.grid, self.num_classes
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise ValueError(f"pairs must be (K, 2), got shape {pairs.shape}")
        if logits.shape != (len(pairs) * g * g, c):
            raise ValueError(
                f"logits must be ({len(pairs)}*{g * g}, {c}) for {len(pairs)} shifts, got shape {logits.shape}"
            )
        index = shift_index(pairs, self.steps, self.patch_size)
        rows, cols = np.divmod(index, self.steps)
        if len(np.unique(index)) != len(pairs) or self._seen[rows, cols].any():
            raise ValueError("a shift was added twice")
        self._seen[rows, cols] = True
        # Advanced indices split by a slice put the K axis first: target is (K, C, G, G).
        self._logits[:, :, rows, :, cols] = logits.reshape(len(pairs), g, g, c).transpose(0, 3, 1, 2)

    def close(self) -> None:
        """Nothing to release: host memory goes with the object."""

    def finish(self, labels: Sequence[str]) -> SaliencyMaps:
        """Build the maps; every one of the S*S shifts must have been added."""
        return self.finish_level(labels, self.steps)

    def finish_level(self, labels: Sequence[str], steps: int) -> SaliencyMaps:
        """The maps of level ``steps`` (S' <= S whose offsets are a subset of S's, e.g. a power
        of two) from the S'*S' shifts of that level only; all of them must have been added.
        Equal to a ``SaliencyAccumulator(S', ...)`` fed with those shifts; the accumulator stays
        open for more shifts (finer levels)."""
        labels = tuple(labels)
        if len(labels) != self.num_classes:
            raise ValueError(f"{len(labels)} labels for {self.num_classes} classes")
        if not 1 <= steps <= self.steps:
            raise ValueError(f"level {steps} is outside 1..{self.steps}")
        offsets = shift_offsets(steps, self.patch_size)
        # Raises unless the level's offsets nest in S's.
        idx = offset_index(offsets, self.steps, self.patch_size)
        seen = self._seen[np.ix_(idx, idx)]
        if not seen.all():
            level = "" if steps == self.steps else f" (level {steps} of {self.steps})"
            raise ValueError(f"only {int(seen.sum())} of {steps**2} shifts were added{level}")
        # (C, G, S', G, S'): a fresh contiguous copy, laid out as the level's own accumulator.
        values = self._logits if steps == self.steps else self._logits[:, :, idx][:, :, :, :, idx]
        shift_logits = values.mean(axis=(1, 3))  # (C, S', S'): image logit of each shifted copy
        zero = int(np.flatnonzero(offsets == 0)[0])
        image_logits = shift_logits[:, zero, zero]
        weights = sigmoid(shift_logits)[:, None, :, None, :]
        return SaliencyMaps(
            steps=steps,
            labels=labels,
            logits=image_logits.astype(np.float32),
            probabilities=sigmoid(image_logits).astype(np.float32),
            raw=self._smooth(values, offsets=offsets),
            scaled=self._smooth(values * weights, offsets=offsets),
            patch_logits=values[:, :, zero, :, zero].astype(np.float32),
        )

    def _smooth(
        self, values: np.ndarray, dtype: type[np.floating] = np.float32, offsets: np.ndarray | None = None
    ) -> np.ndarray:
        """Shift-average ``(C, G, S, G, S)`` float64 patch values into ``(C, H, W)`` of ``dtype``
        (S = len(offsets), default this accumulator's own offsets)."""
        offsets = self.offsets if offsets is None else offsets
        s, g, p, size, c = len(offsets), self.grid, self.patch_size, self.image_size, self.num_classes
        padded = np.zeros((c, g + 2, s, g + 2, s), dtype=np.float64)
        padded[:, 1:-1, :, 1:-1, :] = values
        # Corner (i, j) of a shift's patch grid carries V[i,j] - V[i-1,j] - V[i,j-1] + V[i-1,j-1]
        # (zero outside the grid); it sits at pixel (i*P + dr, j*P + dc).
        corners = (
            padded[:, 1:, :, 1:, :]
            - padded[:, :-1, :, 1:, :]
            - padded[:, 1:, :, :-1, :]
            + padded[:, :-1, :, :-1, :]
        ).reshape(c, (g + 1) * s, (g + 1) * s)
        # Corner positions q = i*P + offsets[a] never decrease along i*S + a (sorted offsets in
        # [-P/2, P/2)), so this is the difference image on the compact grid of corner positions;
        # prefix sums give the summed map, constant on each cell [q_u, q_u+1) x [q_v, q_v+1).
        np.cumsum(corners, axis=1, out=corners)
        np.cumsum(corners, axis=2, out=corners)
        # Each cell covers its clipped pixel run; cells outside the image get length 0. The
        # last cell starts at q >= H, so the runs sum to exactly H.
        pos = np.clip(np.arange(g + 1)[:, None] * p + offsets[None, :], 0, size).ravel()
        runs = np.diff(pos)
        cells = (corners[:, :-1, :-1] / (s * s)).astype(dtype)
        return np.repeat(np.repeat(cells, runs, axis=1), runs, axis=2)


def _all_shifts(logits: np.ndarray, steps: int, image_size: int, patch_size: int) -> SaliencyAccumulator:
    """A ``SaliencyAccumulator`` holding all S*S shifts of ``(S*S*G*G, C)`` patch values in tile order."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (S*S*G*G, C), got shape {logits.shape}")
    acc = SaliencyAccumulator(steps, image_size, patch_size, logits.shape[1])
    acc.add(shift_pairs(steps, patch_size), logits)
    return acc


def shift_average(logits: np.ndarray, steps: int, image_size: int, patch_size: int) -> np.ndarray:
    """One-shot: ``(S*S*G*G, C)`` patch values in tile order -> their shift average, the raw map
    of those values, ``(C, H, W) float32`` (float64 arithmetic, the same as ``smooth_maps``' raw)."""
    acc = _all_shifts(logits, steps, image_size, patch_size)
    return acc._smooth(acc._logits)


def smooth_maps(
    logits: np.ndarray, steps: int, image_size: int, patch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One-shot convenience: ``(S*S*G*G, C)`` patch logits in tile order -> ``(raw, scaled)``,
    each ``(C, H, W) float32``."""
    acc = _all_shifts(logits, steps, image_size, patch_size)
    maps = acc.finish(tuple(str(i) for i in range(acc.num_classes)))
    return maps.raw, maps.scaled


def map_peak(value_map: np.ndarray) -> tuple[int, int]:
    """(row, col) of the maximum of ``value_map (H, W)``, taken at the centre of its plateau.

    Shift-averaged maps are piecewise constant on blocks of the shift step (8 x 8 pixels at
    S = 8 in the 512 frame), so the maximum is a block, not a pixel; the raster-first maximum
    would be that block's top-left corner. Returns the tied pixel nearest the tied pixels' centroid.
    """
    ties = np.argwhere(value_map == value_map.max())
    nearest = ties[int(np.argmin(((ties - ties.mean(axis=0)) ** 2).sum(axis=1)))]
    return int(nearest[0]), int(nearest[1])
