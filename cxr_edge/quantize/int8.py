"""INT8 Q/DQ ONNX from a calibration set (ONNX Runtime static quantization, QDQ format).

Weights: int8, symmetric, per channel on axis 0 (output channels of Conv and Gemm).
Activations depend on the target: ``tensorrt`` needs symmetric int8 (zero point 0); ``cpu`` uses
asymmetric uint8, because ONNX Runtime's x86 kernels fuse every Conv into QLinearConv with uint8
activations but only some with int8. Ranges: percentile (default) or entropy histograms.
EfficientNet's stem, squeeze-excitation gates and head can stay in float32 (``keep_float``).
"""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_edge.calibration import CalibrationSet, PatchReader
from cxr_edge.errors import CxrEdgeError

TARGETS = ("cpu", "tensorrt")
METHODS = ("percentile", "entropy", "minmax")
KEEP_FLOAT_GROUPS = ("stem", "se", "head")


@dataclass(frozen=True)
class Int8Options:
    """``keep_float``: node groups left in float32 (subset of KEEP_FLOAT_GROUPS)."""

    target: str = "cpu"
    method: str = "percentile"
    percentile: float = 99.99
    keep_float: tuple[str, ...] = KEEP_FLOAT_GROUPS
    per_channel: bool = True
    reduce_range: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise CxrEdgeError(None, f"unknown --target {self.target!r}; use one of {', '.join(TARGETS)}")
        if self.method not in METHODS:
            raise CxrEdgeError(
                None, f"unknown calibration method {self.method!r}; use one of {', '.join(METHODS)}"
            )
        unknown = set(self.keep_float) - set(KEEP_FLOAT_GROUPS)
        if unknown:
            raise CxrEdgeError(
                None, f"unknown --keep-float group(s) {sorted(unknown)}; use {KEEP_FLOAT_GROUPS}"
            )


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
    consumers: dict[str, list[Any]] = defaultdict(list)
    producer: dict[str, Any] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
        for name in node.output:
            producer[name] = node
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
    """Write a Q/DQ INT8 ONNX to ``onnx_out`` (caller makes it atomic); return the float groups kept.

    ``cache``: ONNX Runtime calibration-range cache (JSON); reused when present for the same
    model, calibration set and method (the caller puts those in its name).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(onnx_in))
    name_nodes(model)
    groups = find_float_groups(model)
    kept = {g: groups[g] for g in options.keep_float}
    exclude = [name for g in options.keep_float for name in groups[g]]
    symmetric = options.target == "tensorrt"
    method = {
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
        "minmax": CalibrationMethod.MinMax,
    }[options.method]
    extra: dict[str, Any] = {
        "ActivationSymmetric": symmetric,
        "WeightSymmetric": True,
        "CalibTensorRangeSymmetric": symmetric,
        "CalibPercentile": options.percentile,
        "CalibStridedMinMax": 1,  # collect one batch at a time: bounded memory for histograms
        "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "Gemm": 0},
        **options.extra,
    }
    with tempfile.TemporaryDirectory(prefix="cxr-edge-int8.") as tmp:
        named = Path(tmp) / "named.onnx"
        onnx.save(model, str(named))
        reader = PatchReader(calib.patches, model.graph.input[0].name)
        # ONNX Runtime logs advice ("consider pre-processing") through the root logger.
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            quantize_static(
                str(named),
                str(onnx_out),
                calibration_data_reader=reader,
                quant_format=QuantFormat.QDQ,
                per_channel=options.per_channel,
                reduce_range=options.reduce_range,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                calibrate_method=method,
                extra_options=extra,
                calibration_cache_path=None if cache is None else str(cache),
            )
        except (ValueError, RuntimeError) as exc:
            raise CxrEdgeError(onnx_in, f"INT8 quantization failed ({str(exc).splitlines()[0]})") from exc
        finally:
            logging.disable(previous)
    return kept
