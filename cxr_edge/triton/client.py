"""``TritonCxrEdge``: the in-process ``CxrEdge`` API, answered by a Triton server's ``cxr_edge`` model.

    edge = TritonCxrEdge("grpc://127.0.0.1:8001")      # or "http://127.0.0.1:8000"
    pred = edge.predict("chest.png", steps=8)           # the same Prediction as CxrEdge.predict

The file is read here (PNG/JPEG/DICOM, header checks, ``allow_non_chest``); only the 8-bit pixel
array goes to the server, never a DICOM header. The server preprocesses, tiles, runs the network
and postprocesses, and returns logits, probabilities and the raw/scaled maps; the crop follows
from the image size. With the same backend (ONNX Runtime) the numbers equal in-process ones.

Errors: a request the server refuses raises ``CxrEdgeError(image, problem)``; a server that
cannot be reached or goes away mid-request raises ``ServiceUnavailableError`` (one line).
``predict`` is safe to call from several threads: each thread has its own connection.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from cxr_edge.errors import CxrEdgeError, ServiceUnavailableError
from cxr_edge.io.budget import InputBudget
from cxr_edge.io.plausibility import PlausibilityLimits
from cxr_edge.metadata import ModelMetadata
from cxr_edge.pipeline import DecodedImage, decode_image, describe_model
from cxr_edge.prediction import Prediction, findings_from
from cxr_edge.preprocess import CropBox, center_crop_box
from cxr_edge.tile import check_steps
from cxr_edge.triton import protocol

#: Longest one request may take (S=64 on a CPU server is minutes).
DEFAULT_TIMEOUT_S = 600.0
PROTOCOLS = ("http", "grpc")

T = TypeVar("T")

#: gRPC status codes that mean the server is gone or unreachable, not that it refused the request.
_GRPC_UNAVAILABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")


def parse_server_url(url: str) -> tuple[str, str]:
    """``"grpc://host:8001"`` -> ``("grpc", "host:8001")``; ``http://`` or a bare ``host:port`` is HTTP."""
    text = url.strip()
    parts = urlsplit(text if "://" in text else f"http://{text}")
    scheme = parts.scheme.lower()
    if scheme not in PROTOCOLS:
        raise CxrEdgeError(url, f"server URL must start with http:// or grpc://, got {parts.scheme}://")
    if not parts.hostname or parts.port is None or parts.path not in ("", "/"):
        raise CxrEdgeError(url, "server URL must be SCHEME://HOST:PORT (e.g. grpc://127.0.0.1:8001)")
    return scheme, f"{parts.hostname}:{parts.port}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class TritonCxrEdge:
    """A connection to a repository written by ``cxr-edge export-triton``.

    url: ``http://HOST:PORT`` (Triton's HTTP port, 8000 by default) or ``grpc://HOST:PORT``
    (8001). model_name: the image model (``cxr_edge``). timeout_s: longest one request may take.
    Connecting reads the model's config (its metadata); ServiceUnavailableError when the server
    or the model is not ready.
    """

    def __init__(
        self, url: str, model_name: str = protocol.IMAGE_MODEL, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.protocol, self.address = parse_server_url(url)
        try:
            import tritonclient.utils  # noqa: F401 - fail here, with one line, not mid-request
        except ImportError:
            raise CxrEdgeError(
                None, "tritonclient is not installed: pip install 'cxr-edge[triton]'"
            ) from None
        self.url = f"{self.protocol}://{self.address}"
        self.model_name = model_name
        self.timeout_s = float(timeout_s)
        self._local = threading.local()
        #: The same input checks as ``CxrEdge``: the file is read and checked here.
        self.input_budget = InputBudget()
        self.plausibility = PlausibilityLimits()
        config = self._call(self._get_config)
        self.metadata: ModelMetadata = protocol.metadata_from_config(config, self.url)
        params = protocol.config_parameters(config)
        self.layout = params.get(protocol.LAYOUT_PARAM, "")
        info = describe_model(
            self.metadata, params.get(protocol.SOURCE_FILE_PARAM), params.get(protocol.SOURCE_SHA256_PARAM)
        )
        info.update(server=self.url, triton_model=self.model_name, layout=self.layout)
        self._model_info = info

    @property
    def model_info(self) -> dict[str, Any]:
        """What the report says about the model: ``CxrEdge.model_info``'s keys (path: the name
        of the model file the repository was made from) plus ``server``, ``triton_model`` and
        ``layout``."""
        return dict(self._model_info)

    # --- transport -------------------------------------------------------------------------

    def _client(self) -> Any:
        """This thread's tritonclient (HTTP clients are not shareable between threads)."""
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "grpc":
                import tritonclient.grpc as grpcclient

                client = grpcclient.InferenceServerClient(self.address)
            else:
                import tritonclient.http as httpclient

                client = httpclient.InferenceServerClient(
                    self.address, connection_timeout=30.0, network_timeout=self.timeout_s
                )
            self._local.client = client
        return client

    def _drop_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            # Closing a broken connection may fail; it is dropped either way.
            with contextlib.suppress(Exception):
                client.close()

    def _call(self, action: Callable[[Any], T], image: str | None = None) -> T:
        """Run ``action(client)``; turn tritonclient's and the network's errors into ours.

        A connection that failed is dropped, so the next call (e.g. after a server restart)
        connects afresh.
        """
        from tritonclient.utils import InferenceServerException

        try:
            return action(self._client())
        except CxrEdgeError:
            raise
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            message = _one_line(exc.message() if exc.message() else str(exc))
            if self.protocol == "grpc" and status.rsplit(".", 1)[-1] in _GRPC_UNAVAILABLE:
                self._drop_client()
                raise ServiceUnavailableError(
                    self.url, f"Triton server unavailable ({status.rsplit('.', 1)[-1]}: {message})"
                ) from None
            raise CxrEdgeError(image or self.url, f"Triton server {self.url}: {message}") from None
        except Exception as exc:  # noqa: BLE001 - socket, gevent and HTTP errors: the server went away
            self._drop_client()
            text = _one_line(str(exc)) or "connection lost"
            raise ServiceUnavailableError(
                self.url, f"Triton server unavailable ({type(exc).__name__}: {text})"
            ) from None

    def _get_config(self, client: Any) -> dict[str, Any]:
        if not client.is_server_ready():
            raise ServiceUnavailableError(self.url, "Triton server is not ready")
        if not client.is_model_ready(self.model_name):
            raise ServiceUnavailableError(self.url, f"model '{self.model_name}' is not ready on the server")
        if self.protocol == "grpc":
            config: dict[str, Any] = client.get_model_config(self.model_name, as_json=True)
        else:
            config = client.get_model_config(self.model_name)
        return config

    def _infer(self, gray: np.ndarray, steps: int, image: str | None) -> dict[str, np.ndarray]:
        if self.protocol == "grpc":
            import tritonclient.grpc as tc
        else:
            import tritonclient.http as tc

        pixels = np.ascontiguousarray(gray, dtype=np.uint8)[None]
        inputs = [
            tc.InferInput(protocol.IMAGE_INPUT, list(pixels.shape), "UINT8"),
            tc.InferInput(protocol.STEPS_INPUT, [1, 1], "INT32"),
        ]
        inputs[0].set_data_from_numpy(pixels)
        inputs[1].set_data_from_numpy(np.array([[steps]], dtype=np.int32))
        outputs = [tc.InferRequestedOutput(name) for name in protocol.IMAGE_OUTPUTS]

        def run(client: Any) -> dict[str, np.ndarray]:
            if self.protocol == "grpc":
                result = client.infer(self.model_name, inputs, outputs=outputs, client_timeout=self.timeout_s)
            else:
                result = client.infer(self.model_name, inputs, outputs=outputs)
            return {name: result.as_numpy(name) for name in protocol.IMAGE_OUTPUTS}

        return self._call(run, image)

    # --- the API ---------------------------------------------------------------------------

    def predict(
        self, image: str | Path | np.ndarray, steps: int = 8, allow_non_chest: bool = False
    ) -> Prediction:
        """Classify one image on the server; same arguments and result as ``CxrEdge.predict``.

        timings_ms: ``decode`` (here), the server's ``preprocess``, ``tile``, ``backend`` and
        ``postprocess``, and ``round_trip`` (request sent to answer decoded, here). The image
        is decoded and checked here as ``CxrEdge`` does (``decode_image``) and its crop follows
        from its size (``center_crop_box``); the server preprocesses the 8-bit pixels.
        """
        steps = check_steps(steps, self.metadata.patch_size)
        decoded = decode_image(image, allow_non_chest, self.input_budget, self.plausibility)
        crop = center_crop_box(*decoded.gray.shape)
        t0 = time.perf_counter()
        outputs = self._infer(decoded.gray, steps, decoded.name)
        round_trip_ms = (time.perf_counter() - t0) * 1e3
        return self._prediction(outputs, decoded, crop, steps, round_trip_ms)

    def _prediction(
        self,
        outputs: dict[str, np.ndarray],
        decoded: DecodedImage,
        crop: CropBox,
        steps: int,
        round_trip_ms: float,
    ) -> Prediction:
        """The server's outputs as the ``Prediction`` that ``CxrEdge.predict`` builds (the one
        place the two meet)."""
        from cxr_edge.postprocess import SaliencyMaps

        md = self.metadata
        name = decoded.name
        c, n = md.num_classes, md.image_size

        def array(name: str, shape: tuple[int, ...]) -> np.ndarray:
            # A writable float32 copy: tritonclient's arrays are read-only views of its buffers.
            return np.array(outputs[name].reshape(shape), dtype=np.float32)

        try:
            maps = SaliencyMaps(
                steps=steps,
                labels=md.labels,
                logits=array(protocol.LOGITS_OUTPUT, (c,)),
                probabilities=array(protocol.PROBABILITIES_OUTPUT, (c,)),
                raw=array(protocol.RAW_OUTPUT, (c, n, n)),
                scaled=array(protocol.SCALED_OUTPUT, (c, n, n)),
                patch_logits=array(protocol.PATCH_LOGITS_OUTPUT, (c, md.grid, md.grid)),
            )
            raw_info = outputs[protocol.INFO_OUTPUT].reshape(-1)[0]
            server = json.loads(raw_info.decode() if isinstance(raw_info, bytes) else str(raw_info))
        except (KeyError, ValueError, AttributeError) as exc:
            raise CxrEdgeError(
                name or self.url, f"Triton server {self.url} sent a malformed answer ({exc})"
            ) from exc
        timings = {"decode": decoded.decode_ms}
        timings.update(
            {k: float(v) for k, v in server.get("timings_ms", {}).items() if k != "decode"},
            round_trip=round_trip_ms,
        )
        return Prediction(
            findings=findings_from(maps, md),
            maps=maps,
            gray=decoded.gray,
            crop=crop,
            metadata=md,
            backend=f"triton:{server.get('backend', 'unknown')}",
            model=self.model_info,
            image=name,
            source=decoded.source,
            info=decoded.info,
            timings_ms=timings,
        )

    # --- server facts ----------------------------------------------------------------------

    def batch_statistics(self, model_name: str | None = None) -> dict[str, Any]:
        """How the server batched a model's requests since it started: ``inference_count``
        (requests; patches for ``patchnet``) and ``execution_count`` (model executions)."""
        name = model_name or self.model_name

        def read(client: Any) -> dict[str, Any]:
            if self.protocol == "grpc":
                stats: dict[str, Any] = client.get_inference_statistics(name, as_json=True)
            else:
                stats = client.get_inference_statistics(name)
            return stats

        stats = self._call(read)
        inference = execution = 0
        for model in stats.get("model_stats", []):
            inference += int(model.get("inference_count", 0))
            execution += int(model.get("execution_count", 0))
        return {"inference_count": inference, "execution_count": execution}

    def close(self) -> None:
        """Close this thread's connection (other threads' close when they end)."""
        self._drop_client()

    def __enter__(self) -> TritonCxrEdge:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
