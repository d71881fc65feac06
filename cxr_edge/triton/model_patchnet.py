"""Triton Python-backend model ``patchnet``: patch batches in, patch logits out (``--patchnet python``).

Copied as ``<repository>/patchnet/1/model.py`` by ``cxr-edge export-triton --layout split
--patchnet python``: the patch backbone on cxr-edge's own backend (ONNX Runtime, or TensorRT for
a plan), for servers without Triton's ONNX Runtime / TensorRT backends. ``execute`` gets every
request the dynamic batcher merged and runs their patches as one batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from cxr_edge.pipeline import open_backend
from cxr_edge.triton import protocol
from cxr_edge.triton.serving import ModelArgs, one_line


class TritonPythonModel:
    """The Python backend's entry point (the name is Triton's)."""

    def initialize(self, args: dict[str, str]) -> None:
        parsed = ModelArgs.parse(args)
        path = parsed.folder / parsed.params[protocol.MODEL_FILE_PARAM]
        self.backend = open_backend("auto", path, device=parsed.device or 0)
        # The tensor names are the network's own (the config repeats them).
        self.input_name = str(parsed.config["input"][0]["name"])
        self.output_name = str(parsed.config["output"][0]["name"])

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            batches = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
            logits = self.backend.run(np.ascontiguousarray(np.concatenate(batches), dtype=np.float32))
        except Exception as exc:  # noqa: BLE001 - the whole merged batch failed: say so to each request
            error = pb_utils.TritonError(one_line(exc))
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for batch in batches:
            rows = logits[start : start + len(batch)]
            start += len(batch)
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, rows)])
            )
        return responses
