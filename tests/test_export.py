"""ONNX export: graph contract, metadata, parity gate, atomic output, the ``cxr-edge export`` command."""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxsim")

from typer.testing import CliRunner

from cxr_edge.cli import app
from cxr_edge.compare import EXPORT, Tolerance
from cxr_edge.errors import CxrEdgeError
from cxr_edge.export import ParityError, export_onnx, parity_patches
from cxr_edge.metadata import CHEXPERT_LABELS, ModelMetadata
from cxr_edge.model.checkpoint import save_checkpoint
from cxr_edge.model.patchnet import VARIANTS
from cxr_edge.model.sample_patches import image_like_patches

#: Ops a plain EfficientNet patch graph may contain after simplification (no Dropout, no random ops).
ALLOWED_OPS = {"Conv", "Sigmoid", "Mul", "Add", "GlobalAveragePool", "Flatten", "Gemm", "Reshape", "MatMul"}


def _run_onnx(path, patches):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"patches": patches})[0]


def test_tiny_onnx_graph_contract(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "patches" and out.name == "logits"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [1, 64, 64]  # dynamic N
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim][1] == 14
    assert {n.op_type for n in model.graph.node} <= ALLOWED_OPS
    assert [p.key for p in model.metadata_props] == ["cxr_edge"]  # one source of truth


def test_tiny_onnx_metadata(tiny_onnx):
    meta = ModelMetadata.from_onnx(tiny_onnx)
    assert meta.labels == CHEXPERT_LABELS
    assert (meta.image_size, meta.patch_size) == (512, 64)
    assert meta.variant == VARIANTS["tiny"]
    assert meta.preprocessing == "medicalpatchnet-v1"
    assert meta.package_version and len(meta.checkpoint_sha256) == 64


@pytest.mark.parametrize("batch", [1, 3, 33])
def test_onnx_runtime_reproduces_pytorch(tiny_model, tiny_onnx, batch):
    patches = image_like_patches(batch, seed=100 + batch)
    with torch.no_grad():
        expected = tiny_model(torch.from_numpy(patches)).numpy().astype(np.float64)
    got = _run_onnx(tiny_onnx, patches)
    assert got.shape == (batch, 14) and got.dtype == np.float32
    assert expected.std() > 0.5  # not a comparison of near-constant outputs
    assert np.max(np.abs(got - expected)) <= 1e-3


def test_export_report_and_file(tiny_model, tmp_path):
    out = tmp_path / "model.onnx"
    report = export_onnx(tiny_model, out, ModelMetadata(), parity=True)
    assert out.is_file() and report.onnx_bytes == out.stat().st_size
    assert set(report.parity_max_abs_diff) == {1, 7, 64}
    assert 0 <= report.max_abs_diff <= 1e-3
    assert report.parity is not None and report.parity.passed and report.parity.count == 72 * 14
    assert report.parity.tolerance == EXPORT and report.parity.worst_ratio <= 1.0
    assert report.logit_std >= 1.0  # the calibrated tiny model has realistic logits
    assert {"export", "simplify", "check", "parity"} <= set(report.seconds)
    assert oct(out.stat().st_mode & 0o444) == oct(0o444 & ~_umask())  # readable as umask allows
    assert not [p for p in tmp_path.iterdir() if p.name != "model.onnx"]  # no temporary leftovers


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_parity_failure_leaves_no_file(tiny_model, tmp_path):
    out = tmp_path / "model.onnx"
    with pytest.raises(ParityError, match="parity check failed"):
        export_onnx(tiny_model, out, ModelMetadata(), tolerance=Tolerance(atol=-1.0, rtol=0.0))
    assert list(tmp_path.iterdir()) == []


def test_parity_set_holds_the_zero_padded_patches_of_shifted_copies():
    patches = parity_patches(ModelMetadata(), 72, seed=1)
    assert patches.shape == (72, 1, 64, 64) and patches.dtype == np.float32
    assert not patches[0].any()  # wholly outside the shifted image
    assert not patches[1, :, :, :32].any() and patches[1, :, :, 32:].any()  # zeros on one side
    assert not patches[2, :, :32, :32].any() and patches[2, :, 32:, :].any()  # a zero corner
    assert (patches[3:].reshape(69, -1).std(axis=1) > 0).all()  # the rest are image-like


def test_broken_export_fails_the_default_parity(tiny_model, tmp_path, monkeypatch):
    """A subtle export bug: the stem's weights pass through float16 on their way into the ONNX
    (logits move by ~0.1, 3 % of their std); the default elementwise tolerance catches it."""
    import copy

    from cxr_edge import export as export_module

    real_export = export_module._torch_to_onnx

    def half_rounded_stem(model, patch_size, opset):
        broken = copy.deepcopy(model)
        stem = broken.baseBackbone.features[0][0]
        with torch.no_grad():
            stem.weight.copy_(stem.weight.half().float())
        return real_export(broken, patch_size, opset)

    monkeypatch.setattr(export_module, "_torch_to_onnx", half_rounded_stem)
    out = tmp_path / "broken.onnx"
    with pytest.raises(ParityError, match=r"parity check failed: max \|diff\| .* FAILED \(\d+ of 1008"):
        export_onnx(tiny_model, out, ModelMetadata())
    assert list(tmp_path.iterdir()) == []


def test_metadata_class_count_must_match(tiny_model, tmp_path):
    with pytest.raises(CxrEdgeError, match="3 labels but the model has 14"):
        export_onnx(tiny_model, tmp_path / "m.onnx", ModelMetadata(labels=("a", "b", "c")))
    assert list(tmp_path.iterdir()) == []


# --- the command ---------------------------------------------------------------------------------


def test_cli_export_carries_checkpoint_metadata(tiny_model, tmp_path):
    weights = tmp_path / "tiny.pt"
    thresholds = tuple(round(0.2 + 0.01 * i, 2) for i in range(14))
    save_checkpoint(tiny_model, weights, ModelMetadata(thresholds=thresholds, intended_use="demo only"))
    out = tmp_path / "out" / "tiny.onnx"
    result = CliRunner().invoke(app, ["export", "--weights", str(weights), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "parity max |diff|" in result.stdout and str(out) in result.stdout
    meta = ModelMetadata.from_onnx(out)
    assert meta.checkpoint_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert meta.thresholds == thresholds and meta.intended_use == "demo only"
    assert meta.variant == VARIANTS["tiny"]
    patches = image_like_patches(5, seed=8)
    with torch.no_grad():
        expected = tiny_model(torch.from_numpy(patches)).numpy()
    assert np.max(np.abs(_run_onnx(out, patches) - expected)) <= 1e-3


def test_cli_parity_gate_exit_code(tiny_model, tmp_path):
    weights = save_checkpoint(tiny_model, tmp_path / "tiny.pt")
    out = tmp_path / "gate.onnx"
    result = CliRunner().invoke(
        app, ["export", "-w", str(weights), "-o", str(out), "--atol", "-1", "--rtol", "0", "--quiet"]
    )
    assert result.exit_code == 3
    assert "parity check failed" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("content", [None, b"PK\x03\x04 truncated", b"\x80\x04K\x03."])
def test_cli_bad_checkpoint_is_one_line(tmp_path, content):
    weights = tmp_path / "bad.pt"
    if content is not None:
        weights.write_bytes(content)
    out = tmp_path / "never.onnx"
    result = CliRunner().invoke(app, ["export", "--weights", str(weights), "--out", str(out), "--quiet"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {weights}: ")
    assert not out.exists()


# --- full size (minutes on 2 shared cores): run with CXR_EDGE_SLOW=1 ------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CXR_EDGE_SLOW"), reason="full-size export; set CXR_EDGE_SLOW=1")
def test_full_size_official_checkpoint_exports_with_parity(tmp_path):
    from cxr_edge.model.batchnorm import calibrated_random_model

    weights = save_checkpoint(
        calibrated_random_model(VARIANTS["full"], seed=0), tmp_path / "w.pt", official=True
    )
    out = tmp_path / "full.onnx"
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["export", "--weights", str(weights), "--out", str(out), "--quiet"])
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    assert elapsed < 120
    meta = ModelMetadata.from_onnx(out)
    assert meta.variant == VARIANTS["full"] and meta.labels == CHEXPERT_LABELS
    patches = image_like_patches(16, seed=77)
    from cxr_edge.model.checkpoint import load_checkpoint

    model, _ = load_checkpoint(weights)
    with torch.no_grad():
        expected = model(torch.from_numpy(patches)).numpy().astype(np.float64)
    assert expected.std(axis=0).mean() >= 1.0
    assert np.max(np.abs(_run_onnx(out, patches) - expected)) <= 1e-3
    # the export's own parity set (zero-padded patches included) passed the elementwise default
    assert "passed" in result.stdout and f"atol {EXPORT.atol:g} + rtol {EXPORT.rtol:g}" in result.stdout
