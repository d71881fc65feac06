"""The maps ``eval`` scores, by name, and how one image's maps are obtained.

- ``raw``, ``scaled``: the pipeline's maps (``postprocess.MAP_KINDS``; ``scaled`` is the
  definition: each shifted copy's patch logits x sigmoid of that copy's own image logit).
- ``scaled-published``: the scaled map as the public MedicalPatchNet code computes it (its
  DataLoader batches of 4 mix copies up; ``postprocess_published.published_scaled_map``), only
  to compare with the paper's "Scaled" figures. Built from the same run's patch logits, recorded
  on the way (``PatchLogitRecorder``); ``infer`` never uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxr_edge.errors import CxrEdgeError
from cxr_edge.postprocess import MAP_KINDS, SaliencyAccumulator
from cxr_edge.postprocess_published import published_scaled_map
from cxr_edge.preprocess import CropBox

if TYPE_CHECKING:
    from cxr_edge.pipeline import CxrEdge

PUBLISHED_SCALED = "scaled-published"
#: Every map kind ``eval`` can score.
EVAL_MAP_KINDS: tuple[str, ...] = (*MAP_KINDS, PUBLISHED_SCALED)


def parse_map_kinds(text: str) -> tuple[str, ...]:
    """ "both" (raw, scaled), "all", or a comma-separated list of ``EVAL_MAP_KINDS``."""
    if text.strip() == "both":
        return MAP_KINDS
    names = (
        EVAL_MAP_KINDS if text.strip() == "all" else tuple(k.strip() for k in text.split(",") if k.strip())
    )
    unknown = [k for k in names if k not in EVAL_MAP_KINDS]
    if unknown or not names:
        raise CxrEdgeError(
            None, f"--map must be both, all or a list of {', '.join(EVAL_MAP_KINDS)}, got {text!r}"
        )
    return tuple(k for k in EVAL_MAP_KINDS if k in names)


@dataclass(frozen=True)
class ImageMaps:
    """One image as ``eval`` sees it: ``probabilities (C,)``, ``maps`` by kind ``(C, N, N)
    float32`` in the model frame, the ``crop`` that frame came from, the native ``shape``."""

    probabilities: np.ndarray
    maps: dict[str, np.ndarray]
    crop: CropBox
    shape: tuple[int, int]


class _RecordingAccumulator(SaliencyAccumulator):
    """``SaliencyAccumulator`` whose patch logits stay readable by shifted copy (``by_copy``)."""

    @property
    def by_copy(self) -> np.ndarray:
        """``(S*S, G*G, C) float64``: copy k = i*S + j in ``tile.shift_pairs`` order (row offset
        index i, column offset index j), patch p = row*G + col; built on each access from the
        accumulator's own ``(C, G, S, G, S)`` logits (no second copy is kept)."""
        s, g = self.steps, self.grid
        by_copy: np.ndarray = self._logits.transpose(2, 4, 1, 3, 0).reshape(s * s, g * g, self.num_classes)
        return by_copy


class PatchLogitRecorder:
    """An ``AccumulatorFactory`` whose last accumulator's patch logits stay readable
    (``by_copy``: ``(S*S, G*G, C) float64``, copies in ``tile.shift_pairs`` order). One image at
    a time: not for concurrent ``predict`` calls."""

    def __init__(self) -> None:
        self.last: _RecordingAccumulator | None = None

    def __call__(
        self, steps: int, image_size: int, patch_size: int, num_classes: int
    ) -> _RecordingAccumulator:
        self.last = _RecordingAccumulator(steps, image_size, patch_size, num_classes)
        return self.last


class MapSource:
    """``source(image) -> ImageMaps`` for the map ``kinds``, from one ``predict`` per image."""

    def __init__(self, edge: CxrEdge, steps: int, kinds: Sequence[str]) -> None:
        self.steps = steps
        self.kinds = tuple(kinds)
        self._recorder: PatchLogitRecorder | None = None
        self.edge = edge
        if PUBLISHED_SCALED in self.kinds:
            self._recorder = PatchLogitRecorder()
            self.edge = edge.with_accumulator(self._recorder)

    def __call__(self, image: str | Path | np.ndarray) -> ImageMaps:
        pred = self.edge.predict(image, steps=self.steps)
        maps: dict[str, np.ndarray] = {k: pred.maps.map(k) for k in self.kinds if k in MAP_KINDS}
        if self._recorder is not None and self._recorder.last is not None:
            md = self.edge.metadata
            maps[PUBLISHED_SCALED] = published_scaled_map(
                self._recorder.last.by_copy, self.steps, md.image_size, md.patch_size
            )
        return ImageMaps(pred.maps.probabilities, maps, pred.crop, pred.original_shape)
