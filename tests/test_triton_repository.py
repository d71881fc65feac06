"""``cxr-edge export-triton`` without a server: what the repository holds, and refused options.

Serving the repository (both layouts, both protocols, exact equality with in-process results)
is tests/test_triton_server.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxr_edge.assets import default_model_path
from cxr_edge.cli import app
from cxr_edge.digest import sha256_file
from cxr_edge.metadata import ModelMetadata
from cxr_edge.triton import protocol
from cxr_edge.triton.repository import export_repository

runner = CliRunner()


def parameters(config_text: str) -> dict[str, str]:
    """The string parameters of a config.pbtxt, unescaped (JSON string escapes match the text
    format's for the ASCII text written here)."""
    found = re.findall(
        r'\{ key: "((?:[^"\\]|\\.)*)" value: \{ string_value: "((?:[^"\\]|\\.)*)" \} \}', config_text
    )
    return {json.loads(f'"{k}"'): json.loads(f'"{v}"') for k, v in found}


def test_whole_layout_files_and_metadata(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    result = runner.invoke(app, ["export-triton", "--out", str(out), "--instances", "2", "--max-batch", "4"])
    assert result.exit_code == 0, result.output
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["cxr_edge/1/model.onnx", "cxr_edge/1/model.py", "cxr_edge/config.pbtxt"]
    assert sha256_file(out / "cxr_edge/1/model.onnx") == sha256_file(default_model_path())
    source = Path(protocol.__file__).with_name("model_cxr_edge.py")
    assert (out / "cxr_edge/1/model.py").read_text() == source.read_text()

    text = (out / "cxr_edge/config.pbtxt").read_text()
    assert 'backend: "python"' in text and "max_batch_size: 4" in text
    assert "instance_group [ { count: 2 kind: KIND_CPU } ]" in text and "dynamic_batching" in text
    params = parameters(text)
    md = ModelMetadata.from_onnx(default_model_path())
    assert ModelMetadata.from_json(params[protocol.METADATA_PARAM]) == md
    assert json.loads(params["labels"]) == list(md.labels)
    assert json.loads(params["thresholds"]) == list(md.thresholds or [])
    assert params["image_size"] == str(md.image_size) and params["patch_size"] == str(md.patch_size)
    assert params["intended_use"] == md.intended_use
    assert params[protocol.LAYOUT_PARAM] == "whole" and params[protocol.MODEL_FILE_PARAM] == "model.onnx"
    assert params[protocol.SOURCE_SHA256_PARAM] == sha256_file(default_model_path())
    c, n = md.num_classes, md.image_size
    assert f'name: "{protocol.RAW_OUTPUT}" data_type: TYPE_FP32 dims: [ {c}, {n}, {n} ]' in text
    assert f'name: "{protocol.IMAGE_INPUT}" data_type: TYPE_UINT8 dims: [ -1, -1 ]' in text


@pytest.mark.parametrize("patchnet", ["native", "python"])
def test_split_layout(tmp_path: Path, patchnet: str) -> None:
    out = tmp_path / "repo"
    export_repository(default_model_path(), out, layout="split", max_patches=512, patchnet=patchnet)
    image = (out / "cxr_edge/config.pbtxt").read_text()
    patch = (out / "patchnet/config.pbtxt").read_text()
    assert not (out / "cxr_edge/1/model.onnx").exists() and (out / "patchnet/1/model.onnx").is_file()
    assert (out / "patchnet/1/model.py").is_file() == (patchnet == "python")
    engine = 'backend: "python"' if patchnet == "python" else 'platform: "onnxruntime_onnx"'
    assert engine in patch and "max_batch_size: 512" in patch
    md = ModelMetadata.from_onnx(default_model_path())
    assert f'name: "patches" data_type: TYPE_FP32 dims: [ 1, {md.patch_size}, {md.patch_size} ]' in patch
    assert f'name: "logits" data_type: TYPE_FP32 dims: [ {md.num_classes} ]' in patch
    params = parameters(image)
    assert params[protocol.LAYOUT_PARAM] == "split" and params[protocol.PATCH_MODEL_PARAM] == "patchnet"
    assert params[protocol.MAX_PATCHES_PARAM] == "512"
    assert ModelMetadata.from_json(parameters(patch)[protocol.METADATA_PARAM]) == md


def test_refuses_and_leaves_the_folder_alone(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["export-triton", "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {out}: exists and is not empty; choose another folder or pass --force"
    ]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    bad = runner.invoke(
        app, ["export-triton", "--out", str(tmp_path / "b"), "--layout", "split", "--max-patches", "32"]
    )
    assert bad.exit_code == 2 and "--max-patches 32 is smaller than one image's 64 patches" in bad.stderr
    assert not (tmp_path / "b").exists()
    layout = runner.invoke(app, ["export-triton", "--out", str(tmp_path / "c"), "--layout", "half"])
    assert layout.exit_code == 2 and "--layout must be one of whole, split" in layout.stderr
    missing = runner.invoke(
        app, ["export-triton", "--out", str(tmp_path / "d"), "--model", str(tmp_path / "no.onnx")]
    )
    assert missing.exit_code == 2 and "no.onnx: no such model file" in missing.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging folders left behind

    replaced = runner.invoke(app, ["export-triton", "--out", str(out), "--force"])
    assert (
        replaced.exit_code == 0
        and not (out / "keep.txt").exists()
        and (out / "cxr_edge/config.pbtxt").is_file()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_unreadable_or_bare_onnx_is_one_line_naming_the_file(tmp_path: Path) -> None:
    import onnx

    from cxr_edge.errors import CxrEdgeError
    from cxr_edge.triton.repository import read_network

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff not a protobuf \x00" * 8)
    with pytest.raises(CxrEdgeError, match="not a readable ONNX model") as info:
        read_network(garbage)
    assert info.value.path == str(garbage)
    bare = tmp_path / "bare.onnx"
    model = onnx.load(str(default_model_path()))
    del model.metadata_props[:]
    onnx.save(model, str(bare))
    with pytest.raises(CxrEdgeError, match="has no 'cxr_edge' metadata"):
        read_network(bare)


def test_quoting_round_trips_non_ascii(tmp_path: Path) -> None:
    """Intended-use text with quotes, backslashes and non-ASCII survives the text format."""
    import onnx

    from cxr_edge.metadata import write_onnx_metadata

    model = onnx.load(str(default_model_path()))
    md = ModelMetadata.from_onnx(default_model_path()).with_(intended_use='Démo "only" \\ not clinical')
    write_onnx_metadata(model, md)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    export_repository(path, tmp_path / "repo")
    text = (tmp_path / "repo/cxr_edge/config.pbtxt").read_text()
    assert "\\303\\251" in text  # é as UTF-8 octal escapes
    assert 'D\\303\\251mo \\"only\\" \\\\ not clinical' in text
