"""What the server-side Python models share: their parsed arguments, errors, and BLS calls to ``patchnet``.

Importable anywhere: the Python backend's ``triton_python_backend_utils`` (only present inside
Triton's stub process) is passed in by the ``model.py`` files instead of imported here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_edge.errors import CxrEdgeError
from cxr_edge.metadata import ModelMetadata
from cxr_edge.triton import protocol


@dataclass(frozen=True)
class ModelArgs:
    """The Python backend's ``initialize`` arguments, parsed.

    config: the model config as JSON; params: its string parameters; folder: the version folder
    (``<repository>/<model>/<version>``); device: the GPU id of a KIND_GPU instance, else None.
    """

    config: dict[str, Any]
    params: dict[str, str]
    folder: Path
    device: int | None

    @classmethod
    def parse(cls, args: dict[str, str]) -> ModelArgs:
        config = json.loads(args["model_config"])
        device = int(args["model_instance_device_id"]) if args.get("model_instance_kind") == "GPU" else None
        return cls(
            config=config,
            params=protocol.config_parameters(config),
            folder=Path(args["model_repository"]) / args["model_version"],
            device=device,
        )


def one_line(exc: BaseException) -> str:
    """An exception as one line for a Triton error response."""
    text = str(exc) if isinstance(exc, CxrEdgeError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


class BlsPatchBackend:
    """A PatchBackend that runs patches on the repository's ``patchnet`` model through BLS.

    pb_utils: the ``triton_python_backend_utils`` module of the calling model. Request size:
    the pipeline hands ``run`` one chunk at a time, ``DEFAULT_CHUNK_PATCHES`` (256 patches, 4
    shifted copies; this backend declares no ``chunk_patches``), and ``run`` sends it as one
    request, split only where it exceeds ``max_patches`` (``patchnet``'s max batch, the export's
    ``--max-patches``: default 1024, so only a value below 256 splits), one after the other.
    Triton's dynamic batcher merges them with other images' requests.
    """

    #: Each run builds its own requests; nothing is shared between calls.
    thread_safe = True

    def __init__(
        self,
        pb_utils: Any,
        metadata: ModelMetadata,
        model_name: str,
        input_name: str,
        output_name: str,
        max_patches: int,
    ) -> None:
        self._pb = pb_utils
        self.metadata = metadata
        self.model_name = model_name
        self.input_name = input_name
        self.output_name = output_name
        self.max_patches = max_patches
        self.name = f"triton-bls:{model_name}"
        # Logits come back to this process's memory even when patchnet runs on a GPU.
        memory = getattr(pb_utils, "PreferredMemory", None)
        self._preferred = None if memory is None else memory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)

    def run(self, patches: np.ndarray) -> np.ndarray:
        """``(N, 1, P, P) float32`` patches -> ``(N, C) float32`` logits from ``patchnet``."""
        pb = self._pb
        count = len(patches)
        out = np.empty((count, self.metadata.num_classes), dtype=np.float32)
        for start in range(0, count, self.max_patches):
            chunk = np.ascontiguousarray(patches[start : start + self.max_patches], dtype=np.float32)
            options: dict[str, Any] = {}
            if self._preferred is not None:
                options["preferred_memory"] = self._preferred
            request = pb.InferenceRequest(
                model_name=self.model_name,
                requested_output_names=[self.output_name],
                inputs=[pb.Tensor(self.input_name, chunk)],
                **options,
            )
            response = request.exec()
            if response.has_error():
                raise CxrEdgeError(None, f"patch model '{self.model_name}': {response.error().message()}")
            logits = pb.get_output_tensor_by_name(response, self.output_name).as_numpy()
            out[start : start + len(chunk)] = logits.reshape(len(chunk), -1)
        return out
