"""Shared test fixtures. Tests that need the real X-rays skip when ../shared is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_CXR = REPO_ROOT.parent / "shared" / "data" / "cxr"


@pytest.fixture(scope="session")
def shared_cxr() -> Path:
    """Root of the real chest X-ray developer set; skips the test when it is absent."""
    if not (SHARED_CXR / "MANIFEST.csv").is_file():
        pytest.skip("real X-ray set ../shared/data/cxr is not present in this clone")
    return SHARED_CXR


# --- model fixtures (issue 2): a tiny MedicalPatchNet and its ONNX export, built once per session ---


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny MedicalPatchNet (width 0.25, depth 0.25, 14 CheXpert classes), seeded random init with
    BatchNorm statistics calibrated on image-like patches (logits of std ~2, not degenerate); eval mode."""
    torch = pytest.importorskip("torch")
    from cxr_edge.model.batchnorm import calibrate_batchnorm
    from cxr_edge.model.patchnet import VARIANTS, MedicalPatchNet
    from cxr_edge.model.sample_patches import image_like_patches

    with torch.random.fork_rng():
        torch.manual_seed(20260123)
        model = MedicalPatchNet(VARIANTS["tiny"], num_classes=14)
    calibrate_batchnorm(model, image_like_patches(64, patch_size=64, seed=7))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tmp_path_factory) -> Path:
    """``tiny_model`` exported by ``export_onnx`` (metadata included, parity-checked): path to the .onnx."""
    from cxr_edge.export import export_onnx
    from cxr_edge.metadata import ModelMetadata

    path = tmp_path_factory.mktemp("tiny_onnx") / "tiny.onnx"
    export_onnx(tiny_model, path, ModelMetadata(checkpoint_sha256="0" * 64), parity=True)
    return path
