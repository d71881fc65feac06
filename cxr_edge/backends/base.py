"""The one interface every backend implements: run a patch batch, return patch logits."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from cxr_edge.metadata import ModelMetadata


@runtime_checkable
class PatchBackend(Protocol):
    """Runs the patch backbone.

    ``run(patches)``: ``(N, 1, P, P) float32 in [0, 1]`` -> ``(N, C) float32`` logits, for any
    N >= 1 (a backend chunks internally when N exceeds what it can take at once).
    ``metadata`` is the model's metadata; ``name`` a short id for reports ("onnxruntime-cpu").
    """

    metadata: ModelMetadata
    name: str

    def run(self, patches: np.ndarray) -> np.ndarray: ...
