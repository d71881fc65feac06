"""Engine manifests, profile sizing, chunk planning and the no-TensorRT error path (no GPU needed)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from cxr_edge.digest import sha256_file
from cxr_edge.engine.manifest import (
    EngineManifest,
    manifest_path,
    read_manifest,
    verify_manifest,
    verify_onnx_source,
    write_manifest,
)
from cxr_edge.engine.profile import DLA_MAX_BATCH, BatchProfile, plan_chunks, size_profile
from cxr_edge.engine.tensorrt_build import (
    TENSORRT_MISSING,
    import_tensorrt,
    network_flags,
    timing_cache_path,
    use_strong_typing,
    version_tuple,
)
from cxr_edge.errors import CxrEdgeError
from cxr_edge.metadata import ModelMetadata


def _tensorrt_installed() -> bool:
    try:
        import_tensorrt()
    except CxrEdgeError:
        return False
    return True


@pytest.mark.parametrize("max_patches, expected", [(64, 64), (100, 64), (2048, 2048), (2100, 2048)])
def test_gpu_profile_is_whole_copies_from_one(max_patches: int, expected: int) -> None:
    profile = size_profile(max_patches, patches_per_image=64)
    assert (profile.min, profile.opt, profile.max) == (1, expected, expected)
    assert not profile.fixed


def test_dla_profile_is_fixed_and_bounded() -> None:
    profile = size_profile(1000, patches_per_image=64, dla=True)
    assert profile.min == profile.opt == profile.max == 960
    assert profile.fixed
    assert size_profile(DLA_MAX_BATCH, 64, dla=True).max == DLA_MAX_BATCH
    with pytest.raises(CxrEdgeError, match="DLA"):
        size_profile(DLA_MAX_BATCH + 64, 64, dla=True)


def test_profile_smaller_than_one_image_is_refused() -> None:
    with pytest.raises(CxrEdgeError, match="smaller than one image"):
        size_profile(63, patches_per_image=64)


@pytest.mark.parametrize("total", [0, 1, 63, 64, 2047, 2048, 2049, 4096 * 4 + 5])
@pytest.mark.parametrize("profile", [BatchProfile(1, 2048, 2048), BatchProfile(960, 960, 960)])
def test_chunks_cover_every_row_once_within_profile(total: int, profile: BatchProfile) -> None:
    chunks = plan_chunks(total, profile)
    covered = [row for c in chunks for row in range(c.start, c.stop)]
    assert covered == list(range(total))
    for chunk in chunks:
        assert profile.min <= chunk.run_rows <= profile.max
        assert chunk.run_rows >= chunk.rows
        # padding only where the profile forces a larger batch than the rows left
        assert chunk.run_rows == max(chunk.rows, profile.min)


def _manifest(plan_sha: str = "ab" * 32, **changes: object) -> EngineManifest:
    base = {
        "tensorrt_version": "10.3.0.30",
        "gpu_name": "Orin",
        "compute_capability": "8.7",
        "precision": "int8",
        "profile": BatchProfile(1, 2048, 2048),
        "onnx_file": "model.int8.onnx",
        "onnx_sha256": "cd" * 32,
        "plan_sha256": plan_sha,
        "metadata": ModelMetadata(precision="int8", thresholds=tuple(0.5 for _ in range(14))),
        "input_name": "patches",
        "output_name": "logits",
        "dla_core": None,
    }
    base.update(changes)
    return EngineManifest(**base)  # type: ignore[arg-type]


def test_manifest_round_trips_through_json(tmp_path) -> None:
    manifest = _manifest(dla_core=1, profile=BatchProfile(960, 960, 960))
    plan = tmp_path / "m.plan"
    path = write_manifest(plan, manifest)
    assert path == tmp_path / "m.json" == manifest_path(plan)
    assert read_manifest(plan) == manifest
    raw = json.loads(path.read_text())
    assert raw["metadata"]["labels"][0] == "No Finding"
    assert raw["profile"] == {"min": 960, "opt": 960, "max": 960}


def test_verify_accepts_same_machine_and_other_build_number(tmp_path) -> None:
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"serialized engine")
    manifest = _manifest(plan_sha=sha256_file(plan))
    verify_manifest(manifest, plan, tensorrt_version="10.3.0.31", gpu_name="Orin", compute_capability="8.7")


@pytest.mark.parametrize(
    "machine, words",
    [
        (
            {"tensorrt_version": "10.4.0.1", "gpu_name": "Orin", "compute_capability": "8.7"},
            "TensorRT 10.3.0.30",
        ),
        (
            {"tensorrt_version": "10.3.0.30", "gpu_name": "NVIDIA H100", "compute_capability": "9.0"},
            "GPU 'Orin'",
        ),
        ({"tensorrt_version": "10.3.0.30", "gpu_name": "Orin", "compute_capability": "8.6"}, "sm 8.7"),
    ],
)
def test_verify_refuses_other_machine_with_rebuild_hint(tmp_path, machine: dict, words: str) -> None:
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"serialized engine")
    manifest = _manifest(plan_sha=sha256_file(plan))
    with pytest.raises(CxrEdgeError) as info:
        verify_manifest(manifest, plan, **machine)
    message = str(info.value)
    assert words in message
    assert "cxr-edge build-engine --onnx model.int8.onnx --precision int8" in message
    assert "\n" not in message


def test_verify_refuses_changed_plan_bytes(tmp_path) -> None:
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"serialized engine")
    manifest = _manifest(plan_sha=sha256_file(plan))
    plan.write_bytes(b"serialized engine, truncated or replaced")
    with pytest.raises(CxrEdgeError, match="does not match its manifest.*rebuild"):
        verify_manifest(
            manifest, plan, tensorrt_version="10.3.0.30", gpu_name="Orin", compute_capability="8.7"
        )


def test_verify_onnx_source_detects_reexport(tmp_path) -> None:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"v1")
    manifest = _manifest(onnx_sha256=sha256_file(onnx))
    verify_onnx_source(manifest, tmp_path / "m.plan", onnx)
    onnx.write_bytes(b"v2")
    with pytest.raises(CxrEdgeError, match="another ONNX"):
        verify_onnx_source(manifest, tmp_path / "m.plan", onnx)


def test_missing_or_broken_manifest_is_one_line_error(tmp_path) -> None:
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    with pytest.raises(CxrEdgeError, match="no manifest m.json"):
        read_manifest(plan)
    (tmp_path / "m.json").write_text('{"format": 1, "precision": "int4"}')
    with pytest.raises(CxrEdgeError, match="invalid engine manifest"):
        read_manifest(plan)


def test_timing_cache_lives_beside_plans_per_version_and_arch(tmp_path) -> None:
    path = timing_cache_path(tmp_path / "engines", "10.3.0.30", "8.7")
    assert path.parent == tmp_path / "engines"
    assert path.name == "timing-trt10.3.0.30-sm87.cache"


def _fake_trt(strong: bool, flags: bool) -> SimpleNamespace:
    creation = SimpleNamespace(**({"STRONGLY_TYPED": 1} if strong else {}))
    builder_flags = SimpleNamespace(**({"FP16": 0, "INT8": 1} if flags else {}), GPU_FALLBACK=2)
    return SimpleNamespace(NetworkDefinitionCreationFlag=creation, BuilderFlag=builder_flags)


@pytest.mark.parametrize(
    "strong, flags, dla, expected",
    [
        (True, True, False, True),  # TensorRT 10.x GPU: strongly typed
        (True, True, True, False),  # TensorRT 10.x DLA: weakly typed + precision flags
        (True, False, True, True),  # TensorRT 11.x: strongly typed only
        (False, False, False, True),  # TensorRT 11.x without the (then pointless) flag
        (False, True, False, False),  # pre-10: no strong typing
    ],
)
def test_strong_typing_is_feature_detected(strong: bool, flags: bool, dla: bool, expected: bool) -> None:
    fake = _fake_trt(strong, flags)
    assert use_strong_typing(fake, dla) is expected  # type: ignore[arg-type]
    # the creation flag is passed only where it exists
    assert network_flags(fake, expected) == (1 << 1 if expected and strong else 0)  # type: ignore[arg-type]


def test_tensorrt_older_than_10_3_is_one_line(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(Builder=object, __version__="8.6.2.3"))
    with pytest.raises(
        CxrEdgeError, match=r"TensorRT 8.6.2.3 is too old.*JetPack 6.0 ships 8.6.*6.2 ship 10.3"
    ):
        import_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(Builder=object, __version__="11.4.1.2"))
    assert import_tensorrt().__version__ == "11.4.1.2"
    assert version_tuple("10.3.0.30") == (10, 3, 0, 30) and version_tuple("10.13.0.35.post1") == (
        10,
        13,
        0,
        35,
    )


@pytest.mark.skipif(_tensorrt_installed(), reason="TensorRT is installed here")
def test_build_engine_without_tensorrt_says_so(tmp_path, tiny_onnx) -> None:
    from typer.testing import CliRunner

    from cxr_edge.cli import app

    out = tmp_path / "engines" / "tiny.plan"
    result = CliRunner().invoke(
        app, ["build-engine", "--onnx", str(tiny_onnx), "--precision", "fp16", "--out", str(out)]
    )
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: {TENSORRT_MISSING}"]
    assert not out.exists() and not out.with_suffix(".json").exists()
