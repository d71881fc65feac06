"""Files shipped inside the package: the demo model and a sample image (a phantom)."""

from __future__ import annotations

from pathlib import Path

from cxr_edge.errors import CxrEdgeError

ASSETS_DIR = Path(__file__).resolve().parent
DEMO_MODEL_NAME = "demo_model.onnx"
SAMPLE_IMAGE_NAME = "sample_chest.png"


def _asset(name: str, what: str) -> Path:
    path = ASSETS_DIR / name
    if not path.is_file():
        raise CxrEdgeError(path, f"bundled {what} is missing from this installation; pass one explicitly")
    return path


def default_model_path() -> Path:
    """The bundled demo ONNX model (what ``cxr-edge infer`` uses without ``--model``)."""
    return _asset(DEMO_MODEL_NAME, "demo model")


def sample_image_path() -> Path:
    """The bundled sample chest image (a phantom, not a patient)."""
    return _asset(SAMPLE_IMAGE_NAME, "sample image")
