"""ONNX Runtime on the CPU: the embedded default backend.

Thread safety: ``InferenceSession.run`` may be called from several threads at once (ONNX Runtime
documents concurrent ``Run`` calls on one session as safe), so one ``OnnxRuntimeBackend`` can be
shared by threads; each call then competes for the same intra-op thread pool.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_edge.backends.base import DEFAULT_CHUNK_PATCHES
from cxr_edge.errors import CxrEdgeError
from cxr_edge.metadata import ModelMetadata

DEFAULT_MAX_BATCH = 1024


def _first_line(exc: Exception) -> str:
    """ORT error texts span many lines; CxrEdgeError messages are one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class OnnxRuntimeBackend:
    """Runs the patch model with ONNX Runtime's CPU execution provider.

    model_path: an ONNX file carrying ``metadata_props["cxr_edge"]``.
    threads: intra-op threads (None: ONNX Runtime's default, one per physical core).
    max_batch: most patches per ``session.run``; larger inputs are chunked (bounds activation
    memory). A model exported with a fixed batch size runs in chunks of exactly that size.
    chunk_patches: what the pipeline should send per ``run`` (``ChunkedBackend``): 256 patches
    (16 MiB of input), the CPU chunk the pipeline has always used, or the fixed batch.
    """

    name = "onnxruntime-cpu"
    #: Concurrent ``run`` calls on one session are safe (see the module docstring).
    thread_safe = True

    def __init__(
        self, model_path: str | Path, threads: int | None = None, max_batch: int = DEFAULT_MAX_BATCH
    ):
        import onnxruntime as ort

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise CxrEdgeError(self.model_path, "no such model file")
        if max_batch < 1:
            raise CxrEdgeError(self.model_path, f"max_batch must be >= 1, got {max_batch}")
        if threads is not None and not 1 <= threads <= available_cores():
            raise CxrEdgeError(
                None,
                f"--threads must be 1..{available_cores()} (the CPU cores this process may use), got {threads}",
            )

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0 = ONNX Runtime decides
        options.inter_op_num_threads = 1  # one linear graph: nothing to run in parallel across ops
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; warnings about unused initialisers are noise
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises InvalidProtobuf, Fail, ... with long messages
            raise CxrEdgeError(self.model_path, f"not a loadable ONNX model ({_first_line(exc)})") from exc

        self.metadata = ModelMetadata.from_props(
            dict(self.session.get_modelmeta().custom_metadata_map), self.model_path
        )
        self.threads = threads
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise CxrEdgeError(
                self.model_path, f"expected 1 input and >= 1 output, got {len(inputs)} and {len(outputs)}"
            )
        self._input_name = inputs[0].name
        self._output_name = outputs[0].name
        patch = self.metadata.patch_size
        shape = list(inputs[0].shape)
        if len(shape) != 4 or [d if isinstance(d, int) else None for d in shape[1:]] not in (
            [1, patch, patch],
            [None, patch, patch],
            [1, None, None],
            [None, None, None],
        ):
            raise CxrEdgeError(
                self.model_path, f"model input shape {shape} does not take (N, 1, {patch}, {patch}) patches"
            )
        # A fixed batch dimension (an export without dynamic axes) dictates the chunk size.
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.max_batch = self.fixed_batch or max_batch
        self.chunk_patches = self.fixed_batch or min(self.max_batch, DEFAULT_CHUNK_PATCHES)

    def run(self, patches: np.ndarray) -> np.ndarray:
        """``(N, 1, P, P) float32`` patches in [0, 1] -> ``(N, C) float32`` logits."""
        patch, classes = self.metadata.patch_size, self.metadata.num_classes
        if not isinstance(patches, np.ndarray) or patches.dtype != np.float32:
            got = patches.dtype if isinstance(patches, np.ndarray) else type(patches).__name__
            raise CxrEdgeError(self.model_path, f"patches must be a float32 array, got {got}")
        if patches.ndim != 4 or patches.shape[1:] != (1, patch, patch):
            raise CxrEdgeError(
                self.model_path, f"patches must be (N, 1, {patch}, {patch}), got {tuple(patches.shape)}"
            )
        count = len(patches)
        out = np.empty((count, classes), dtype=np.float32)
        for start in range(0, count, self.max_batch):
            chunk = np.ascontiguousarray(patches[start : start + self.max_batch])
            size = len(chunk)
            if self.fixed_batch is not None and size < self.fixed_batch:
                # the last chunk of a fixed-batch model: pad with zero patches, drop their logits
                chunk = np.concatenate(
                    [chunk, np.zeros((self.fixed_batch - size, 1, patch, patch), np.float32)]
                )
            try:
                logits = self.session.run([self._output_name], {self._input_name: chunk})[0]
            except Exception as exc:
                raise CxrEdgeError(self.model_path, f"inference failed ({_first_line(exc)})") from exc
            logits = np.asarray(logits)
            if logits.ndim != 2 or logits.shape[1] != classes:
                raise CxrEdgeError(
                    self.model_path,
                    f"model output shape {logits.shape} does not match {classes} labels in its metadata",
                )
            out[start : start + size] = logits[:size]
        return out
