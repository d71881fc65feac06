"""INT8 Q/DQ and FP16 ONNX, the float groups, the accuracy gate and ``cxr-edge quantize``.

The tiny model has random weights, so INT8 accuracy on it means nothing (the real gate runs on the
demo model); these tests check structure, the gate's arithmetic and the command's contract.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from cxr_edge.calibration import SamplingSettings, load_calibration_set
from cxr_edge.evaluate.metrics import auroc
from cxr_edge.metadata import ModelMetadata
from cxr_edge.quantize.fp16 import convert_fp16
from cxr_edge.quantize.gate import GateImage, pearson_r, run_gate
from cxr_edge.quantize.int8 import Int8Options, find_float_groups, name_nodes, quantize_int8


def _image_like(count: int, seed: int) -> np.ndarray:
    from cxr_edge.model.sample_patches import image_like_patches

    return np.asarray(image_like_patches(count, patch_size=64, seed=seed), dtype=np.float32)


def _ort(path: Path | str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def calib_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small synthetic chest images as PNG files (the real set is used by the demo-model run)."""
    from cxr_edge.phantoms import render_phantom

    folder = tmp_path_factory.mktemp("calib")
    for seed in range(3):
        assert cv2.imwrite(str(folder / f"p{seed}.png"), render_phantom(seed, size=256).image)
    return folder


def test_float_groups_find_stem_se_and_head(tiny_onnx: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    name_nodes(model)
    nodes = {n.name: n for n in model.graph.node}
    groups = find_float_groups(model)
    stem = [nodes[n] for n in groups["stem"]]
    assert stem[0].op_type == "Conv" and stem[0].input[0] == model.graph.input[0].name
    assert [n.op_type for n in stem[1:]] == ["Sigmoid", "Mul"]
    head_ops = [nodes[n].op_type for n in groups["head"]]
    assert head_ops[0] == "Conv" and head_ops[-1] in ("Gemm", "MatMul")
    assert model.graph.output[0].name in nodes[groups["head"][-1]].output
    pools = [n for n in model.graph.node if n.op_type == "GlobalAveragePool"]
    se = [nodes[n] for n in groups["se"]]
    assert sum(n.op_type == "GlobalAveragePool" for n in se) == len(pools) - 1
    # each SE path ends at a sigmoid feeding the gating Mul (the gate itself, which multiplies the
    # block's feature map, is not in the group)
    se_outputs = {o for n in se for o in n.output}
    assert all(i in se_outputs for n in se if n.op_type == "Mul" for i in n.input)
    gates = [n for n in model.graph.node if n.name not in groups["se"] and n.op_type == "Mul"
             and any(i in se_outputs for i in n.input)]  # fmt: skip
    assert len(gates) == len(pools) - 1
    assert all(nodes[n].op_type != "Mul" or n not in [g.name for g in gates] for n in groups["se"])
    assert not set(groups["stem"]) & set(groups["se"]) and not set(groups["head"]) & set(groups["se"])


def test_fp16_has_float32_io_fp16_weights_and_close_outputs(tiny_onnx: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    half = convert_fp16(model)
    for value in [*half.graph.input, *half.graph.output]:
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT
    assert {t.data_type for t in half.graph.initializer} == {TensorProto.FLOAT16}
    path = tmp_path / "half.onnx"
    onnx.save(half, str(path))
    x = _image_like(32, seed=1)
    ref, got = _ort(tiny_onnx, x).astype(np.float64), _ort(path, x).astype(np.float64)
    assert got.dtype == np.float64 and got.shape == ref.shape
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max()

    kept = convert_fp16(model, keep_fp32=("Gemm",))
    gemm = next(n for n in kept.graph.node if n.op_type == "Gemm")
    inits = {t.name: t for t in kept.graph.initializer}
    assert inits[gemm.input[1]].data_type == TensorProto.FLOAT


def _qdq_facts(path: Path) -> tuple[list[int], list[np.ndarray], dict[str, onnx.NodeProto]]:
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q_types, weight_scales = [], []
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2:
            q_types.append(inits[node.input[2]].dtype)
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[0]].ndim == 4:
            weight_scales.append((inits[node.input[0]], inits[node.input[1]], inits[node.input[2]]))
    producers = {o: n for n in model.graph.node for o in n.output}
    return q_types, weight_scales, producers  # type: ignore[return-value]


@pytest.mark.parametrize("target, act_dtype", [("tensorrt", np.int8), ("cpu", np.uint8)])
def test_int8_qdq_structure(
    tiny_onnx: Path, calib_folder: Path, tmp_path: Path, target: str, act_dtype
) -> None:
    meta = ModelMetadata.from_onnx(tiny_onnx)
    calib = load_calibration_set(calib_folder, meta, SamplingSettings(patches_per_image=32))
    out = tmp_path / f"{target}.onnx"
    cache = tmp_path / "ranges.json"
    kept = quantize_int8(tiny_onnx, out, calib, Int8Options(target=target), cache=cache)
    assert cache.is_file() and cache.stat().st_size < 1_000_000
    q_types, weights, producers = _qdq_facts(out)
    assert q_types and all(t == act_dtype for t in q_types)
    model = onnx.load(str(out))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if target == "tensorrt":  # symmetric activations: every zero point is 0
        zps = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
        assert all(np.all(z == 0) for z in zps)
    assert weights
    for q_weight, scale, zero in weights:  # per-channel (axis 0), symmetric int8 weights
        assert q_weight.dtype == np.int8 and np.all(zero == 0)
        assert scale.shape == (q_weight.shape[0],)
    # the stem conv stays float (float16 in the TensorRT recipe's remainder): its weight is a float
    # initializer, not a DequantizeLinear output
    stem = next(n for n in model.graph.node if n.name == kept["stem"][0])
    remainder = np.float16 if target == "tensorrt" else np.float32
    assert stem.input[1] in inits and inits[stem.input[1]].dtype == remainder
    # reads the graph input directly (through the float16 cast of the TensorRT recipe)
    assert producers.get(stem.input[0]) is None or producers[stem.input[0]].op_type == "Cast"
    from cxr_edge.engine.tensorrt_build import int8_activation_type

    # build-engine refuses a cpu-target (uint8) model for TensorRT on this check
    assert int8_activation_type(out) == np.dtype(act_dtype).name
    assert int8_activation_type(tiny_onnx) == "none"
    y = _ort(out, _image_like(8, seed=2))
    assert y.shape == (8, 14) and np.isfinite(y).all()


def test_auroc_and_pearson_match_independent_math() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(40) < 0.4
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounding makes ties
    # ROC by sweeping every threshold, area by trapezoids (ties -> diagonal segments = 1/2)
    thresholds = np.unique(scores)[::-1]
    tpr = [0.0] + [float((scores[labels] >= t).mean()) for t in thresholds]
    fpr = [0.0] + [float((scores[~labels] >= t).mean()) for t in thresholds]
    expected = sum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(len(tpr) - 1))
    assert auroc(labels, scores) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(auroc(np.zeros(40, bool), scores))
    a, b = rng.normal(size=100), rng.normal(size=100)
    assert pearson_r(a, a * 3 + b) == pytest.approx(np.corrcoef(a, a * 3 + b)[0, 1], abs=1e-12)


def _gate_images(count: int) -> list[GateImage]:
    from cxr_edge.phantoms import render_phantom

    images = []
    for i in range(count):
        phantom = render_phantom(500 + i, size=512)
        labels = np.full(14, -1.0, np.float32)
        labels[2] = phantom.labels["Cardiomegaly"]
        labels[10] = i % 2  # both outcomes present for a second class
        images.append(GateImage(f"p{i}", phantom.image, labels, i < 2))
    return images


def test_gate_passes_identical_model_and_fails_a_damaged_one(tiny_onnx: Path, tmp_path: Path) -> None:
    images = _gate_images(6)
    same = run_gate(tiny_onnx, tiny_onnx, "fp32", images, threads=1, speed_repeats=0)
    assert same.max_abs_logit_diff == 0.0 and same.worst_auroc_diff == 0.0
    assert all(r == pytest.approx(1.0) for r in same.map_r.values()) and len(same.map_r) == 2
    assert same.passed and same.lines()[-1].endswith("PASSED")

    model = onnx.load(str(tiny_onnx))  # damage: zero the stem weights except one channel
    stem = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = next(t for t in model.graph.initializer if t.name == stem.input[1])
    array = numpy_helper.to_array(weight).copy()
    array[1:] = 0
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    damaged = tmp_path / "damaged.onnx"
    onnx.save(model, str(damaged))
    report = run_gate(tiny_onnx, damaged, "int8", images, threads=1, speed_repeats=1)
    assert report.max_abs_logit_diff > 0.1
    assert not report.passed and report.lines()[-1].endswith("FAILED")
    assert report.seconds_fp32 and report.seconds_candidate and "CPU speed" in "\n".join(report.lines())


def test_quantize_command_fp16_writes_model_and_int8_failure_writes_nothing(
    tiny_onnx: Path, calib_folder: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from cxr_edge.cli import app

    runner = CliRunner()
    gate = ["--gate-real", "0", "--gate-phantoms", "6", "--gate-phantom-maps", "1", "--threads", "1"]
    out16 = tmp_path / "m.fp16.onnx"
    result = runner.invoke(
        app, ["quantize", "--onnx", str(tiny_onnx), "--precision", "fp16", "--out", str(out16), *gate]
    )
    assert result.exit_code == 0, result.output
    assert "accuracy gate (fp16 vs fp32" in result.output and "result: PASSED" in result.output
    assert ModelMetadata.from_onnx(out16).precision == "fp16"

    out8 = tmp_path / "m.int8.onnx"
    calib_dir = tmp_path / "calibration"
    # clipping activations at the median destroys the model: the gate must fail and write nothing
    args = ["quantize", "--onnx", str(tiny_onnx), "--precision", "int8", "--calib", str(calib_folder),
            "--percentile", "50", "--patches-per-image", "16", "--out", str(out8),
            "--calibration-dir", str(calib_dir), *gate]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 3, result.output
    assert "result: FAILED" in result.output and "failed the accuracy gate" in result.output
    assert not out8.exists() and not list(tmp_path.glob("*.part"))
    assert (calib_dir / f"{calib_folder.name}.manifest.json").is_file()

    result = runner.invoke(
        app, ["quantize", "--onnx", str(tiny_onnx), "--precision", "int8", "--out", str(out8)]
    )
    assert result.exit_code == 2 and "needs --calib" in result.output


# --- the TensorRT recipe: Q/DQ only where TensorRT wants it, the rest in float16 -----------------

WEIGHTED = {"Conv", "Gemm", "MatMul"}


def tensorrt_qdq_violations(model: onnx.ModelProto) -> list[str]:
    """Everything in a Q/DQ graph that TensorRT's parser or placement guide rejects, found
    independently of the quantizer: a DequantizeLinear whose quantized input is not int8 (an int32
    bias, uint8 data), a Q/DQ pair whose consumers include no weighted op and no Add, a zero point
    that is not an int8 zero, a DequantizeLinear read by more than one node."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    problems = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zero = inits.get(node.input[2]) if len(node.input) > 2 else None
        if zero is not None and np.any(zero != 0):
            problems.append(f"{node.name}: non-zero zero point")
        if node.op_type == "QuantizeLinear":
            if zero is None or zero.dtype != np.int8:
                problems.append(f"{node.name}: quantizes to {None if zero is None else zero.dtype}, not int8")
            continue
        source = node.input[0]
        if source in inits:
            if inits[source].dtype != np.int8:
                problems.append(f"{node.name}: dequantizes a {inits[source].dtype} constant")
            continue
        if producers.get(source) is None or producers[source].op_type != "QuantizeLinear":
            problems.append(f"{node.name}: input is not a QuantizeLinear output")
        users = readers.get(node.output[0], [])
        if len(users) != 1:
            problems.append(f"{node.name}: read by {len(users)} nodes")
        if not {u.op_type for u in users} & (WEIGHTED | {"Add"}):
            problems.append(f"{node.name}: feeds only {sorted({u.op_type for u in users})}")
    return problems


@pytest.fixture(scope="module")
def tensorrt_int8(tiny_onnx: Path, calib_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    meta = ModelMetadata.from_onnx(tiny_onnx)
    calib = load_calibration_set(calib_folder, meta, SamplingSettings(patches_per_image=32))
    out = tmp_path_factory.mktemp("trt") / "tiny.tensorrt.onnx"
    quantize_int8(tiny_onnx, out, calib, Int8Options(target="tensorrt"))
    return out


def test_tensorrt_graph_has_qdq_only_where_tensorrt_wants_it(tiny_onnx: Path, tensorrt_int8: Path) -> None:
    model = onnx.load(str(tensorrt_int8))
    assert tensorrt_qdq_violations(model) == []
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    kept = {n for group in find_float_groups(_named(tiny_onnx)).values() for n in group}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    quantized = [n for n in convs if n.name not in kept]
    assert quantized and len(quantized) < len(convs)
    for node in quantized:  # int8 input and per-channel int8 weights; the bias stays a float constant
        assert producers[node.input[0]].op_type == "DequantizeLinear"
        weight_dq = producers[node.input[1]]
        assert weight_dq.op_type == "DequantizeLinear" and inits[weight_dq.input[0]].dtype == np.int8
        assert inits[weight_dq.input[1]].shape == (inits[weight_dq.input[0]].shape[0],)
        assert len(node.input) < 3 or inits[node.input[2]].dtype == np.float16
    for node in convs:
        if node.name in kept:  # kept groups get no Q/DQ at all
            assert (
                producers.get(node.input[0]) is None or producers[node.input[0]].op_type != "DequantizeLinear"
            )
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    residual_pairs = [
        n
        for n in adds
        if any(producers.get(i) and producers[i].op_type == "DequantizeLinear" for i in n.input)
    ]
    assert residual_pairs and all(  # exactly one input of such an Add is quantized: the skip input
        sum(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input) == 1
        for n in residual_pairs
    )
    # the unquantized rest is float16; model I/O stays float32; scales are float16 (opset >= 19)
    floats = {t.data_type for t in model.graph.initializer} - {TensorProto.INT8}
    assert floats == {TensorProto.FLOAT16}
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19


def _named(path: Path) -> onnx.ModelProto:
    model = onnx.load(str(path))
    name_nodes(model)
    return model


def test_inspection_catches_what_onnxruntime_places_by_default(
    tiny_onnx: Path, calib_folder: Path, tmp_path: Path
) -> None:
    """The check above is not vacuous: ONNX Runtime's own QDQ output (the cpu recipe) breaks it."""
    meta = ModelMetadata.from_onnx(tiny_onnx)
    calib = load_calibration_set(calib_folder, meta, SamplingSettings(patches_per_image=16))
    out = tmp_path / "cpu.onnx"
    quantize_int8(tiny_onnx, out, calib, Int8Options(target="cpu"))
    problems = "\n".join(tensorrt_qdq_violations(onnx.load(str(out))))
    assert "dequantizes a int32 constant" in problems  # quantized biases
    assert "non-zero zero point" in problems  # uint8 activations
    assert "feeds only" in problems  # Q/DQ in front of Sigmoid/Mul/pooling


def _demo_tensorrt_models() -> tuple[onnx.ModelProto, dict[str, onnx.ModelProto]]:
    """The demo model and its TensorRT-recipe INT8 models (float32 and float16 remainder), placed
    from the committed range cache (no calibration images needed)."""
    from cxr_edge.assets import default_model_path
    from cxr_edge.quantize.ranges import _read_cache, absmax
    from cxr_edge.quantize.tensorrt_qdq import place_qdq

    model = _named(default_model_path())
    keep = [n for group in find_float_groups(model).values() for n in group]
    (cache,) = (Path(__file__).resolve().parents[1] / "calibration").glob("*-tensorrt-mse.ranges.json")
    ranges = _read_cache(cache, "mse")
    placed = {
        hp: place_qdq(model, lambda t: absmax(ranges, t), keep, high_precision=hp) for hp in ("fp32", "fp16")
    }
    return model, placed


def test_tensorrt_int8_of_the_demo_model_tracks_float32() -> None:
    """On a trained network (the demo model), image-like and zero-padded patches: the INT8 patch
    logits follow float32 (r 0.9996 measured), and the float16 remainder only adds float16
    rounding to the float32-remainder model (r 0.9997 measured)."""
    model, placed = _demo_tensorrt_models()
    x = _image_like(64, seed=3)
    x[0] = 0.0
    x[1, :, :, :32] = 0.0

    def run(m: onnx.ModelProto) -> np.ndarray:
        import onnxruntime as ort

        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {"patches": x})[0], dtype=np.float64)

    ref, int8_fp32, int8_fp16 = run(model), run(placed["fp32"]), run(placed["fp16"])
    assert np.isfinite(int8_fp16).all() and int8_fp16.shape == ref.shape
    assert np.corrcoef(int8_fp16.ravel(), ref.ravel())[0, 1] > 0.995
    assert np.corrcoef(int8_fp16.ravel(), int8_fp32.ravel())[0, 1] > 0.999
    assert tensorrt_qdq_violations(placed["fp16"]) == []


def test_census_counts_the_tensorrt_graph(tensorrt_int8: Path) -> None:
    from cxr_edge.quantize.qdq_census import qdq_census

    model = onnx.load(str(tensorrt_int8))
    census = qdq_census(model)
    ops = [n.op_type for n in model.graph.node]
    assert census["QuantizeLinear"] == ops.count("QuantizeLinear") == census["activation pairs"]
    assert census["DequantizeLinear"] == ops.count("DequantizeLinear")
    assert (
        census["activation pairs"]
        == census["activation pairs into Conv/Gemm"] + census["activation pairs into Add"]
    )
    assert census["int8 weight DequantizeLinear"] == census["activation pairs into Conv/Gemm"]
    for kind in ("int32 DequantizeLinear (quantized biases)", "shared DequantizeLinear", "non-zero zero points",
                 "activation pairs into other ops only"):  # fmt: skip
        assert census[kind] == 0, kind


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CXR_EDGE_SLOW"), reason="demo-model INT8 gate; set CXR_EDGE_SLOW=1")
@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_demo_model_int8_passes_the_gate(shared_cxr: Path, tmp_path: Path, target: str) -> None:
    """The committed calibration caches, the default recipe per target, the full gate."""
    import shutil

    from cxr_edge.assets import default_model_path
    from cxr_edge.quantize import GateSettings, make_precision_onnx
    from cxr_edge.quantize.qdq_census import qdq_census

    repo = Path(__file__).resolve().parents[1] / "calibration"
    for cache in repo.glob("*.ranges.json"):
        shutil.copy(cache, tmp_path)
    out = tmp_path / f"demo.{target}.int8.onnx"
    result = make_precision_onnx(
        default_model_path(), out, "int8", calib=repo / "nih14-dev.txt", int8=Int8Options(target=target),
        gate=GateSettings(holdout=repo / "nih14-holdout.txt"), calibration_dir=tmp_path,
    )  # fmt: skip
    assert result.report.passed, "\n".join(result.report.lines())
    if target == "tensorrt":
        assert tensorrt_qdq_violations(onnx.load(str(out))) == []
        assert qdq_census(onnx.load(str(out)))["int32 DequantizeLinear (quantized biases)"] == 0


def test_quantize_writes_calibration_files_beside_the_output_not_the_cwd(
    tiny_onnx: Path, calib_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from cxr_edge.cli import app

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "models" / "m.int8.onnx"
    args = ["quantize", "--onnx", str(tiny_onnx), "--precision", "int8", "--calib", str(calib_folder),
            "--target", "tensorrt", "--patches-per-image", "16", "--out", str(out), "--gate-real", "0",
            "--gate-phantoms", "6", "--gate-phantom-maps", "1", "--threads", "1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 3), result.output  # random tiny weights: the gate may go either way
    assert list(cwd.iterdir()) == []
    written = sorted(p.name for p in out.parent.iterdir() if p.name != out.name)
    assert written == [
        f"{calib_folder.name}-{_digest_prefix(out.parent)}-{_sha12(tiny_onnx)}-tensorrt-mse.ranges.json",
        f"{calib_folder.name}.manifest.json",
    ]
    mask = os.umask(0)
    os.umask(mask)
    for name in written:  # the same mode as any other output (not ONNX Runtime's 0600)
        assert (out.parent / name).stat().st_mode & 0o777 == 0o666 & ~mask
    assert f"manifest and range cache in {out.parent}" in result.output or result.exit_code == 3


def _sha12(path: Path) -> str:
    from cxr_edge.digest import sha256_file

    return sha256_file(path)[:12]


def _digest_prefix(folder: Path) -> str:
    import json

    (manifest,) = folder.glob("*.manifest.json")
    return str(json.loads(manifest.read_text())["digest"])[:8]
