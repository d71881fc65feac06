"""OnnxRuntimeBackend on a tiny hand-built ONNX (conv + relu + global pool + gemm) checked in float64 numpy."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cxr_edge.backends.base import PatchBackend
from cxr_edge.backends.onnxruntime import OnnxRuntimeBackend
from cxr_edge.errors import CxrEdgeError
from cxr_edge.metadata import ModelMetadata, write_onnx_metadata

PATCH = 16
LABELS = ("alpha", "beta", "gamma")
METADATA = ModelMetadata(labels=LABELS, image_size=128, patch_size=PATCH, thresholds=(0.5, 0.4, 0.3))


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv_w": rng.normal(size=(4, 1, 3, 3)).astype(np.float32),
        "conv_b": rng.normal(size=4).astype(np.float32),
        "fc_w": rng.normal(size=(len(LABELS), 4)).astype(np.float32),
        "fc_b": rng.normal(size=len(LABELS)).astype(np.float32),
    }


def _build(
    path: Path, batch: int | str = "N", metadata: ModelMetadata | None = METADATA, side: int = PATCH
) -> Path:
    w = _weights()
    nodes = [
        helper.make_node("Conv", ["patches", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_patch_model",
        [helper.make_tensor_value_info("patches", TensorProto.FLOAT, [batch, 1, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, len(LABELS)])],
        initializer=[numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata is not None:
        write_onnx_metadata(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _numpy_reference(patches: np.ndarray) -> np.ndarray:
    """The same network in float64 numpy, written out tap by tap."""
    w = {k: v.astype(np.float64) for k, v in _weights().items()}
    x = np.pad(patches[:, 0].astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    n, side = len(patches), patches.shape[-1]
    conv = np.zeros((n, 4, side, side))
    for o in range(4):
        for dy in range(3):
            for dx in range(3):
                conv[:, o] += w["conv_w"][o, 0, dy, dx] * x[:, dy : dy + side, dx : dx + side]
        conv[:, o] += w["conv_b"][o]
    pooled = np.maximum(conv, 0).mean(axis=(2, 3))
    logits: np.ndarray = pooled @ w["fc_w"].T + w["fc_b"]
    return logits


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("ort") / "tiny.onnx")


def _patches(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, PATCH, PATCH), dtype=np.float32)


def test_metadata_and_protocol(tiny_model_path: Path) -> None:
    backend = OnnxRuntimeBackend(tiny_model_path, threads=1)
    assert isinstance(backend, PatchBackend)
    assert backend.name == "onnxruntime-cpu"
    assert backend.metadata == METADATA
    assert backend.session.get_providers() == ["CPUExecutionProvider"]
    assert backend.session.get_session_options().intra_op_num_threads == 1


def test_run_matches_numpy(tiny_model_path: Path) -> None:
    patches = _patches(10)
    logits = OnnxRuntimeBackend(tiny_model_path, threads=1).run(patches)
    assert logits.shape == (10, 3) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, _numpy_reference(patches), rtol=1e-4, atol=1e-5)


def test_chunking_equals_one_shot(tiny_model_path: Path) -> None:
    patches = _patches(10, seed=2)
    whole = OnnxRuntimeBackend(tiny_model_path, threads=1).run(patches)
    chunked = OnnxRuntimeBackend(tiny_model_path, threads=1, max_batch=3).run(patches)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)
    # non-contiguous input (a strided view) is accepted and gives the same numbers
    doubled = np.repeat(patches, 2, axis=0)[::2]
    np.testing.assert_allclose(
        OnnxRuntimeBackend(tiny_model_path, max_batch=4).run(doubled), whole, atol=1e-6
    )


def test_fixed_batch_model_is_padded(tmp_path: Path) -> None:
    path = _build(tmp_path / "fixed.onnx", batch=4)
    backend = OnnxRuntimeBackend(path, threads=1, max_batch=100)
    assert backend.max_batch == 4
    patches = _patches(10, seed=3)
    np.testing.assert_allclose(backend.run(patches), _numpy_reference(patches), rtol=1e-4, atol=1e-5)


def test_concurrent_calls(tiny_model_path: Path) -> None:
    backend = OnnxRuntimeBackend(tiny_model_path, threads=1, max_batch=4)
    inputs = [_patches(9, seed=s) for s in range(6)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(backend.run, inputs))
    for patches, logits in zip(inputs, results):
        np.testing.assert_allclose(logits, _numpy_reference(patches), rtol=1e-4, atol=1e-5)


def _one_line_error(exc: pytest.ExceptionInfo[CxrEdgeError], path: Path, needle: str) -> None:
    text = str(exc.value)
    assert text.startswith(f"{path}: ") and needle in text and "\n" not in text


def test_load_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    with pytest.raises(CxrEdgeError) as exc:
        OnnxRuntimeBackend(missing)
    _one_line_error(exc, missing, "no such model file")

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf \x00\x01\x02" * 10)
    with pytest.raises(CxrEdgeError) as exc:
        OnnxRuntimeBackend(garbage)
    _one_line_error(exc, garbage, "not a loadable ONNX model")

    bare = _build(tmp_path / "bare.onnx", metadata=None)
    with pytest.raises(CxrEdgeError) as exc:
        OnnxRuntimeBackend(bare)
    _one_line_error(exc, bare, "no 'cxr_edge' metadata")

    wrong_side = _build(tmp_path / "wrong_side.onnx", side=PATCH * 2)
    with pytest.raises(CxrEdgeError) as exc:
        OnnxRuntimeBackend(wrong_side)
    _one_line_error(exc, wrong_side, "does not take")


def test_run_rejects_bad_patches(tiny_model_path: Path) -> None:
    backend = OnnxRuntimeBackend(tiny_model_path, threads=1)
    bad_inputs: list[np.ndarray] = [
        _patches(2).astype(np.float64),
        np.zeros((2, 1, PATCH, PATCH + 1), np.float32),
        np.zeros((2, 3, PATCH, PATCH), np.float32),
        np.zeros((2, PATCH, PATCH), np.float32),
    ]
    for bad in bad_inputs:
        with pytest.raises(CxrEdgeError) as exc:
            backend.run(bad)
        _one_line_error(exc, tiny_model_path, "patches must be")


def test_empty_batch(tiny_model_path: Path) -> None:
    out = OnnxRuntimeBackend(tiny_model_path).run(np.zeros((0, 1, PATCH, PATCH), np.float32))
    assert out.shape == (0, 3) and out.dtype == np.float32


def test_exported_tiny_patchnet_matches_torch(tiny_model: object, tiny_onnx: Path) -> None:
    """The model engineer's exported tiny MedicalPatchNet gives the torch model's logits."""
    torch = pytest.importorskip("torch")
    backend = OnnxRuntimeBackend(tiny_onnx, threads=2, max_batch=5)
    assert backend.metadata.patch_size == 64 and backend.metadata.num_classes == 14
    from cxr_edge.model.sample_patches import image_like_patches

    # image-like input keeps activations in the range the fixture's BatchNorm was calibrated on
    patches = image_like_patches(12, patch_size=64, seed=4)
    with torch.no_grad():
        want = tiny_model(torch.from_numpy(patches)).double().numpy()  # type: ignore[operator]
    got = backend.run(patches)
    assert got.shape == (12, 14)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
