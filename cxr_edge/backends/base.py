"""The interfaces backends implement: run a patch batch, return patch logits (host or device).

A backend knows nothing of shifts or saliency: it maps patches to logits. The pipeline finds
out what a backend can do through these runtime-checkable protocols, never by sniffing names.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from cxr_edge.metadata import ModelMetadata


@runtime_checkable
class PatchBackend(Protocol):
    """Runs the patch backbone.

    ``run(patches)``: ``(N, 1, P, P) float32 in [0, 1]`` -> ``(N, C) float32`` logits, for any
    N >= 1 (a backend chunks internally when N exceeds what it can take at once).
    ``metadata`` is the model's metadata; ``name`` a short id for reports ("onnxruntime-cpu");
    ``thread_safe``: whether ``run`` may be called from several threads at once (the pipeline
    serialises calls to a backend that says False).
    """

    metadata: ModelMetadata
    name: str
    thread_safe: bool

    def run(self, patches: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class DeviceBackend(PatchBackend, Protocol):
    """A GPU backend that can leave its logits on the device (``TensorRtBackend``)."""

    def run_device(self, patches: np.ndarray, out_ptr: int | None = None) -> Any:
        """Like ``run``, writing ``(N, C) float32`` logits to device address ``out_ptr``;
        asynchronous on the backend's stream."""
        ...

    def synchronize(self) -> None:
        """Wait for everything the backend enqueued."""
        ...
