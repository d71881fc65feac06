"""INT8 Q/DQ ONNX from a calibration set: one recipe per target, ranges from ``ranges.py``.

- ``tensorrt``: TensorRT's placement (``tensorrt_qdq``): symmetric int8 with zero point 0 at the
  inputs of Conv/Gemm and the residual inputs of Adds only, per-channel int8 weights, float biases,
  the remainder in float16 (``--high-precision``) with float32 model I/O.
- ``cpu``: what ONNX Runtime's x86 kernels run fastest (ONNX Runtime static quantization, QDQ
  format, every quantizable op): uint8 activations (asymmetric) with int8 per-channel weights
  (U8S8, fused into QLinearConv; int8 activations (S8S8) ran 0.38x float32's speed on an AVX-512
  VNNI EPYC, U8S8 2.26x to 2.43x), the remainder in float32.

EfficientNet's stem, squeeze-excitation paths and head can stay unquantized (``keep_float``);
the defaults per target are the fastest choice that passes the accuracy gate on the demo model.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_edge.calibration import CalibrationSet
from cxr_edge.errors import CxrEdgeError
from cxr_edge.quantize.graph import graph_links
from cxr_edge.quantize.tensorrt_qdq import HIGH_PRECISIONS, place_qdq

TARGETS = ("cpu", "tensorrt")
METHODS = ("percentile", "mse", "entropy", "minmax")
KEEP_FLOAT_GROUPS = ("stem", "se", "head")
CPU_ACTIVATIONS = ("uint8", "int8")
#: Float groups each target leaves unquantized unless told otherwise: the fastest placement that
#: passes the gate on the demo model. cpu (uint8, full-size model, 256 patches, same run):
#: stem+se+head float 1.81x float32's speed, stem+head 2.43x, stem 2.38x, nothing 2.26x, but map r
#: needs the stem and the head in float (worst gate map r: nothing 0.959, stem 0.982, stem+head
#: 0.991). tensorrt: stem, squeeze-excitation 1x1 convs (on 1x1 maps) and head stay float16.
DEFAULT_KEEP_FLOAT: dict[str, tuple[str, ...]] = {"cpu": ("stem", "head"), "tensorrt": KEEP_FLOAT_GROUPS}
#: Precision of everything that is not INT8, per target.
DEFAULT_HIGH_PRECISION = {"cpu": "fp32", "tensorrt": "fp16"}
#: Activation-range method per target: symmetric int8 (TensorRT) loses a bit on the one-sided SiLU
#: outputs, and a fixed percentile then clips too much on some tensors and too little on others
#: (demo model, worst gate map r: percentile 99.99 0.961, entropy 0.970, mse 0.987); asymmetric
#: uint8 (cpu) passes with percentile 99.99.
DEFAULT_METHOD = {"cpu": "percentile", "tensorrt": "mse"}


@dataclass(frozen=True)
class Int8Options:
    """``method``: activation ranges (METHODS), None for the target's default; ``keep_float``: node
    groups left unquantized (subset of KEEP_FLOAT_GROUPS), None for the target's default;
    ``high_precision``: fp16 or fp32 for the unquantized rest, None for the target's default;
    ``cpu_activations``: uint8 or int8 activations of the ``cpu`` recipe."""

    target: str = "cpu"
    method: str | None = None
    percentile: float = 99.99
    keep_float: tuple[str, ...] | None = None
    high_precision: str | None = None
    cpu_activations: str = "uint8"
    per_channel: bool = True
    reduce_range: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise CxrEdgeError(None, f"unknown --target {self.target!r}; use one of {', '.join(TARGETS)}")
        if self.method is not None and self.method not in METHODS:
            raise CxrEdgeError(
                None, f"unknown calibration method {self.method!r}; use one of {', '.join(METHODS)}"
            )
        unknown = set(self.keep_float or ()) - set(KEEP_FLOAT_GROUPS)
        if unknown:
            raise CxrEdgeError(
                None, f"unknown --keep-float group(s) {sorted(unknown)}; use {KEEP_FLOAT_GROUPS}"
            )
        if self.high_precision not in (None, *HIGH_PRECISIONS):
            raise CxrEdgeError(None, f"unknown --high-precision {self.high_precision!r}; use fp16 or fp32")
        if self.target == "cpu" and self.high_precision == "fp16":
            raise CxrEdgeError(
                None, "--high-precision fp16 is for --target tensorrt (ONNX Runtime's CPU kernels are fp32)"
            )
        if self.range_method == "mse" and not self.symmetric:
            raise CxrEdgeError(None, "--method mse needs symmetric ranges: --target tensorrt")
        if self.cpu_activations not in CPU_ACTIVATIONS:
            raise CxrEdgeError(
                None, f"unknown CPU activation type {self.cpu_activations!r}; use uint8 or int8"
            )

    @property
    def range_method(self) -> str:
        return self.method or DEFAULT_METHOD[self.target]

    @property
    def float_groups(self) -> tuple[str, ...]:
        return DEFAULT_KEEP_FLOAT[self.target] if self.keep_float is None else self.keep_float

    @property
    def remainder_precision(self) -> str:
        return self.high_precision or DEFAULT_HIGH_PRECISION[self.target]

    @property
    def symmetric(self) -> bool:
        """Symmetric activation ranges: TensorRT only takes zero point 0."""
        return self.target == "tensorrt" or self.cpu_activations == "int8"


def name_nodes(model: Any) -> None:
    """Give every unnamed node a unique name in place (exclusion lists are by node name)."""
    seen = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)


def _silu_after(node: Any, consumers: dict[str, list[Any]]) -> list[Any]:
    """The Sigmoid + Mul (SiLU) that directly follow ``node``'s output, if that is what follows."""
    out = node.output[0]
    sigmoids = [c for c in consumers.get(out, []) if c.op_type == "Sigmoid"]
    found = []
    for sigmoid in sigmoids:
        muls = [c for c in consumers.get(sigmoid.output[0], []) if c.op_type == "Mul" and out in c.input]
        found += [sigmoid, *muls]
    return found


def find_float_groups(model: Any) -> dict[str, list[str]]:
    """Node names of EfficientNet's stem, squeeze-excitation paths and head, found from the graph.

    stem: the Conv reading the graph input and its SiLU. se: each GlobalAveragePool that does not
    feed the classifier, through its 1x1 convs and SiLU to the sigmoid (the gating Mul excluded).
    head: the last 1x1 Conv + SiLU, the final pooling, Flatten and the Gemm/MatMul classifier.
    """
    graph = model.graph
    consumers, producer = graph_links(graph)
    groups: dict[str, list[Any]] = {"stem": [], "se": [], "head": []}

    graph_inputs = {i.name for i in graph.input}
    for node in graph.node:
        if node.op_type == "Conv" and node.input[0] in graph_inputs:
            groups["stem"] += [node, *_silu_after(node, consumers)]

    pools = [n for n in graph.node if n.op_type in ("GlobalAveragePool", "ReduceMean")]
    head_pool = pools[-1] if pools else None
    if head_pool is not None:
        tail = [head_pool]
        frontier = list(head_pool.output)
        while frontier:  # everything downstream of the last pool is the classifier
            for consumer in consumers.get(frontier.pop(), []):
                if consumer not in tail:
                    tail.append(consumer)
                    frontier += list(consumer.output)
        silu_mul = producer.get(head_pool.input[0])
        if silu_mul is not None and silu_mul.op_type == "Mul":
            conv = next(
                (
                    producer.get(i)
                    for i in silu_mul.input
                    if producer.get(i) is not None and producer[i].op_type == "Conv"
                ),
                None,
            )
            if conv is not None:
                tail = [conv, *_silu_after(conv, consumers), *tail]
        groups["head"] = tail

    for pool in pools:
        if pool is head_pool:
            continue
        path, frontier = [pool], list(pool.output)
        while frontier and len(path) < 12:
            for consumer in consumers.get(frontier.pop(), []):
                if consumer in path:
                    continue
                inside = {o for n in path for o in n.output}
                if consumer.op_type == "Mul" and not all(i in inside for i in consumer.input):
                    # The gate multiplies the block's full feature map: it stays quantized so that
                    # map never leaves int8; only the small pooled path runs in float.
                    continue
                path.append(consumer)
                frontier += list(consumer.output)
        groups["se"] += path
    return {group: list(dict.fromkeys(n.name for n in nodes)) for group, nodes in groups.items()}


def quantize_int8(
    onnx_in: str | Path,
    onnx_out: str | Path,
    calib: CalibrationSet,
    options: Int8Options,
    cache: str | Path | None = None,
) -> dict[str, list[str]]:
    """Write a Q/DQ INT8 ONNX for ``options.target`` to ``onnx_out`` (caller makes it atomic);
    return the float groups left unquantized (group -> node names).

    ``cache``: the activation-range cache (``ranges.py``); read when present, written when not.
    """
    import onnx

    from cxr_edge.quantize.ranges import absmax, activation_ranges

    model = onnx.load(str(onnx_in))
    name_nodes(model)
    groups = find_float_groups(model)
    kept = {g: groups[g] for g in options.float_groups}
    exclude = [name for g in options.float_groups for name in groups[g]]
    with tempfile.TemporaryDirectory(prefix="cxr-edge-int8.") as tmp:
        named = Path(tmp) / "named.onnx"
        onnx.save(model, str(named))
        cache_file = Path(cache) if cache is not None else Path(tmp) / "ranges.json"
        ranges = activation_ranges(
            named,
            calib,
            method=options.range_method,
            percentile=options.percentile,
            symmetric=options.symmetric,
            cache=cache_file,
        )
        if options.target == "tensorrt":
            quantized = place_qdq(
                model, lambda t: absmax(ranges, t), exclude, high_precision=options.remainder_precision
            )
            onnx.save(quantized, str(onnx_out))
        else:
            _quantize_for_onnxruntime(named, Path(onnx_out), cache_file, options, exclude)
    return kept


def _quantize_for_onnxruntime(
    named: Path, onnx_out: Path, cache: Path, options: Int8Options, exclude: list[str]
) -> None:
    """ONNX Runtime's static QDQ quantization of every quantizable op, ranges from ``cache``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from cxr_edge.quantize.ranges import calibration_method, quiet_onnxruntime

    int8_acts = options.cpu_activations == "int8"
    extra: dict[str, Any] = {
        "ActivationSymmetric": int8_acts,
        "WeightSymmetric": True,
        "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "Gemm": 0},
        **options.extra,
    }
    try:
        with quiet_onnxruntime():
            quantize_static(
                str(named),
                str(onnx_out),
                calibration_data_reader=None,  # the ranges are in the cache
                quant_format=QuantFormat.QDQ,
                per_channel=options.per_channel,
                reduce_range=options.reduce_range,
                activation_type=QuantType.QInt8 if int8_acts else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                calibrate_method=calibration_method(options.range_method),
                extra_options=extra,
                calibration_cache_path=str(cache),
            )
    except (ValueError, RuntimeError) as exc:
        raise CxrEdgeError(named, f"INT8 quantization failed ({str(exc).splitlines()[0]})") from exc
