"""The Triton client's pieces that need no server: URLs and config parameters (both JSON forms)."""

from __future__ import annotations

import pytest

from cxr_edge.assets import default_model_path
from cxr_edge.errors import CxrEdgeError
from cxr_edge.metadata import ModelMetadata
from cxr_edge.triton import protocol
from cxr_edge.triton.client import parse_server_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("grpc://127.0.0.1:8001", ("grpc", "127.0.0.1:8001")),
        ("http://triton.local:8000/", ("http", "triton.local:8000")),
        ("localhost:8000", ("http", "localhost:8000")),
        ("GRPC://h:1", ("grpc", "h:1")),
    ],
)
def test_parse_server_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_server_url(url) == expected


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://h:443", "must start with http:// or grpc://"),
        ("grpc://h", "must be SCHEME://HOST:PORT"),
        ("http://h:8000/v2/models", "must be SCHEME://HOST:PORT"),
    ],
)
def test_parse_server_url_refuses(url: str, problem: str) -> None:
    with pytest.raises(CxrEdgeError, match=problem):
        parse_server_url(url)


def test_metadata_from_either_config_form() -> None:
    md = ModelMetadata.from_onnx(default_model_path())
    params = protocol.metadata_parameters(md)
    http_form = {"name": "cxr_edge", "parameters": {k: {"string_value": v} for k, v in params.items()}}
    grpc_form = {"config": http_form}  # tritonclient gRPC as_json: the config under "config"
    camel_form = {"parameters": {k: {"stringValue": v} for k, v in params.items()}}
    for config in (http_form, grpc_form, camel_form):
        assert protocol.metadata_from_config(config, "server") == md
        assert protocol.config_parameters(config)["labels"] == params["labels"]
    with pytest.raises(CxrEdgeError, match="has no 'cxr_edge_metadata' parameter; export the repository"):
        protocol.metadata_from_config({"parameters": {}}, "http://h:1")
