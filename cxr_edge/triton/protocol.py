"""What the repository, the server-side models and the client agree on: names and parameters.

The image model (``cxr_edge``) takes one X-ray per request and answers with everything a
``Prediction`` needs besides what the client already has (the 8-bit image, hence the crop):

===============  =======  ==============  ===================================================
tensor           type     shape (request)  meaning
===============  =======  ==============  ===================================================
IMAGE            UINT8    (1, h, w)        the 8-bit grayscale X-ray at its own resolution
STEPS            INT32    (1, 1)           shifts per patch side S (power of two, 1..64)
LOGITS           FP32     (1, C)           image logits of the unshifted copy
PROBABILITIES    FP32     (1, C)           sigmoid(LOGITS)
RAW, SCALED      FP32     (1, C, N, N)     shift-averaged maps in logit units, model frame
PATCH_LOGITS     FP32     (1, C, G, G)     the unshifted copy's patch logits (G = N / patch)
SERVER_INFO      BYTES    (1, 1)           JSON: {"backend": str, "timings_ms": {stage: ms}}
===============  =======  ==============  ===================================================

The leading 1 is Triton's batch dimension (``max_batch_size`` > 0, dynamic batching).

The model's metadata travels in the config's ``parameters`` (string values): ``cxr_edge_metadata``
is the ONNX file's ``metadata_props["cxr_edge"]`` JSON as it is (the one source); ``labels``,
``thresholds``, ``image_size``, ``patch_size``, ``intended_use`` repeat parts of it for people
reading the config and are never read back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cxr_edge.errors import CxrEdgeError
from cxr_edge.metadata import ModelMetadata

#: Model names inside a repository.
IMAGE_MODEL = "cxr_edge"
PATCH_MODEL = "patchnet"

#: ``whole``: one Python-backend model runs everything; ``split``: the image model tiles and
#: postprocesses, the patch backbone is its own model (``patchnet``) called through BLS.
LAYOUTS = ("whole", "split")

IMAGE_INPUT = "IMAGE"
STEPS_INPUT = "STEPS"
LOGITS_OUTPUT = "LOGITS"
PROBABILITIES_OUTPUT = "PROBABILITIES"
RAW_OUTPUT = "RAW"
SCALED_OUTPUT = "SCALED"
PATCH_LOGITS_OUTPUT = "PATCH_LOGITS"
INFO_OUTPUT = "SERVER_INFO"
IMAGE_OUTPUTS = (
    LOGITS_OUTPUT,
    PROBABILITIES_OUTPUT,
    RAW_OUTPUT,
    SCALED_OUTPUT,
    PATCH_LOGITS_OUTPUT,
    INFO_OUTPUT,
)

# Config parameter keys.
METADATA_PARAM = "cxr_edge_metadata"
LAYOUT_PARAM = "layout"
#: File name of the network inside the serving model's version folder ("model.onnx").
MODEL_FILE_PARAM = "model_file"
#: Repository-relative path and sha256 of the network file, for reports ("patchnet/1/model.onnx").
SOURCE_FILE_PARAM = "source_file"
SOURCE_SHA256_PARAM = "source_sha256"
#: split: the patch model's name, its tensor names, and the most patches per BLS request.
PATCH_MODEL_PARAM = "patch_model"
PATCH_INPUT_PARAM = "patch_input"
PATCH_OUTPUT_PARAM = "patch_output"
MAX_PATCHES_PARAM = "max_patches"


def metadata_parameters(metadata: ModelMetadata) -> dict[str, str]:
    """Config parameters describing the model: the metadata JSON plus readable copies of parts."""
    return {
        METADATA_PARAM: metadata.to_json(),
        "labels": json.dumps(list(metadata.labels)),
        "thresholds": json.dumps(None if metadata.thresholds is None else list(metadata.thresholds)),
        "image_size": str(metadata.image_size),
        "patch_size": str(metadata.patch_size),
        "intended_use": metadata.intended_use,
    }


def config_parameters(config: dict[str, Any]) -> dict[str, str]:
    """``{key: string value}`` from a model config as JSON (Triton's HTTP answer, the Python
    backend's ``args["model_config"]``, or tritonclient gRPC's ``as_json`` form)."""
    raw = config.get("config", config).get("parameters", {}) or {}
    params: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            text = value.get("string_value", value.get("stringValue"))
            if isinstance(text, str):
                params[str(key)] = text
    return params


def metadata_from_config(config: dict[str, Any], source: str | Path | None) -> ModelMetadata:
    """The model's metadata from its config parameters; CxrEdgeError when they lack it."""
    params = config_parameters(config)
    if METADATA_PARAM not in params:
        raise CxrEdgeError(
            source,
            f"model config has no '{METADATA_PARAM}' parameter; export the repository with "
            "'cxr-edge export-triton'",
        )
    return ModelMetadata.from_json(params[METADATA_PARAM], source)


def server_info_json(backend: str, timings_ms: dict[str, float]) -> bytes:
    """The SERVER_INFO value: which backend ran the network, and the server's stage timings."""
    return json.dumps({"backend": backend, "timings_ms": timings_ms}, sort_keys=True).encode()
