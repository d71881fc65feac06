"""Triton Python-backend model ``cxr_edge``: one X-ray in, logits, probabilities and maps out.

Copied as ``<repository>/cxr_edge/1/model.py`` by ``cxr-edge export-triton``; runs inside
Triton's Python backend stub, whose interpreter must have cxr-edge installed. Tensors and
parameters: ``cxr_edge.triton.protocol``. Layout ``whole`` runs the network here (ONNX Runtime
or TensorRT); ``split`` sends the patches to ``patchnet`` through BLS.

Dynamic batching hands ``execute`` several requests; each is answered on its own (one bad
request fails alone, with a one-line error).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from cxr_edge.pipeline import CxrEdge
from cxr_edge.triton import protocol
from cxr_edge.triton.serving import BlsPatchBackend, ModelArgs, one_line


class TritonPythonModel:
    """The Python backend's entry point (the name is Triton's)."""

    def initialize(self, args: dict[str, str]) -> None:
        parsed = ModelArgs.parse(args)
        params = parsed.params
        if params[protocol.LAYOUT_PARAM] == "whole":
            path = parsed.folder / params[protocol.MODEL_FILE_PARAM]
            self.edge = CxrEdge.load(path, device=parsed.device or 0)  # hashes the file now
        else:
            backend = BlsPatchBackend(
                pb_utils,
                protocol.metadata_from_config(parsed.config, args["model_name"]),
                params[protocol.PATCH_MODEL_PARAM],
                params[protocol.PATCH_INPUT_PARAM],
                params[protocol.PATCH_OUTPUT_PARAM],
                int(params[protocol.MAX_PATCHES_PARAM]),
            )
            self.edge = CxrEdge(backend)

    def _answer(self, request: Any) -> Any:
        image = pb_utils.get_input_tensor_by_name(request, protocol.IMAGE_INPUT).as_numpy()
        steps = pb_utils.get_input_tensor_by_name(request, protocol.STEPS_INPUT).as_numpy()
        pred = self.edge.predict(image[0], steps=int(steps.reshape(-1)[0]))
        maps = pred.maps
        info = protocol.server_info_json(pred.backend, pred.timings_ms)
        outputs = {
            protocol.LOGITS_OUTPUT: np.asarray(maps.logits, dtype=np.float32)[None],
            protocol.PROBABILITIES_OUTPUT: np.asarray(maps.probabilities, dtype=np.float32)[None],
            protocol.RAW_OUTPUT: np.asarray(maps.raw, dtype=np.float32)[None],
            protocol.SCALED_OUTPUT: np.asarray(maps.scaled, dtype=np.float32)[None],
            protocol.PATCH_LOGITS_OUTPUT: np.asarray(maps.patch_logits, dtype=np.float32)[None],
            protocol.INFO_OUTPUT: np.array([[info]], dtype=np.object_),
        }
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs.items()])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                responses.append(self._answer(request))
            except Exception as exc:  # noqa: BLE001 - any failure becomes this request's error
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(one_line(exc))))
        return responses
