"""INT8 Q/DQ placement for TensorRT, written with ``onnx`` alone from calibrated ranges.

Follows TensorRT's ONNX parser (DequantizeLinear inputs are INT8/FP8/INT4: no INT32 biases) and
its Q/DQ placement guide (quantize every input of a weighted op, not its output; quantize the
residual input of a skip connection, so the Add fuses into the convolution before it):

- each Conv/Gemm not kept in float reads its data input through its own QuantizeLinear ->
  DequantizeLinear pair (symmetric int8, zero point 0, one scale per tensor = calibrated
  ``absmax / 127``) and its weight through a DequantizeLinear of an int8 initializer, one scale
  per output channel (axis 0; axis 1 for a Gemm with ``transB=0``); biases stay float;
- each Add with a branch input (a tensor only this Add reads) gets a pair on its other, residual
  input (a tensor other nodes read too: the block input);
- nothing else is quantized: no Q/DQ in front of Sigmoid, Mul or pooling, none after any op, and
  no DequantizeLinear is shared (one consumer each);
- with ``high_precision="fp16"`` the rest of the graph is float16 (``convert_fp16``, model I/O
  float32, opset 19 so scales can be float16), so a strongly typed TensorRT build runs no float32
  layers; scales are rounded up to float16 values before the weights are quantized with them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from cxr_edge.errors import CxrEdgeError
from cxr_edge.quantize.graph import graph_links

WEIGHTED_OPS = ("Conv", "Gemm")
HIGH_PRECISIONS = ("fp16", "fp32")
#: Opset whose QuantizeLinear/DequantizeLinear take float16 scales (13 only takes float32).
FP16_QDQ_OPSET = 19
INT8_MAX = 127


def _representable_scale(scale: np.ndarray, dtype: type[np.floating[Any]]) -> np.ndarray:
    """``scale`` rounded up to the nearest value of ``dtype`` (so ``absmax / scale <= 127``), positive."""
    rounded = scale.astype(dtype)
    low = rounded.astype(np.float64) < scale
    rounded[low] = np.nextafter(rounded[low], dtype(np.inf))
    tiny = np.finfo(dtype).smallest_subnormal
    rounded[~(rounded > 0)] = tiny
    return rounded


def residual_input(add: Any, consumers: dict[str, list[Any]], producers: dict[str, Any]) -> str | None:
    """The skip-connection input of ``add``: the other input when exactly one input is a branch
    output (a node's output read by this Add alone); None when the Add has no such shape."""
    if len(add.input) != 2:
        return None
    branch = [name in producers and [c.name for c in consumers[name]] == [add.name] for name in add.input]
    if branch.count(True) != 1:
        return None
    other = add.input[branch.index(False)]
    return other if other in producers else None


class _Builder:
    """Adds Q/DQ nodes and their initializers to a graph (names derived from tensor + consumer)."""

    def __init__(self, model: Any, scale_dtype: type[np.floating[Any]]) -> None:
        self.model = model
        self.scale_dtype = scale_dtype
        self.initializers: list[Any] = []
        self.before: dict[str, list[Any]] = defaultdict(list)  # consumer node name -> new nodes
        self.scales: dict[str, str] = {}

    def _scale(self, tensor: str, absmax: float) -> tuple[str, str]:
        from onnx import numpy_helper

        if tensor not in self.scales:
            scale = _representable_scale(np.array(max(absmax, 0.0) / INT8_MAX), self.scale_dtype)
            self.scales[tensor] = f"{tensor}__scale"
            self.initializers += [
                numpy_helper.from_array(np.float32(scale), f"{tensor}__scale"),
                numpy_helper.from_array(np.array(0, np.int8), f"{tensor}__zero_point"),
            ]
        return self.scales[tensor], f"{tensor}__zero_point"

    def activation_pair(self, node: Any, position: int, absmax: float) -> None:
        from onnx import helper

        tensor = node.input[position]
        scale, zero = self._scale(tensor, absmax)
        quantized, restored = f"{tensor}__q_for_{node.name}", f"{tensor}__dq_for_{node.name}"
        self.before[node.name] += [
            helper.make_node("QuantizeLinear", [tensor, scale, zero], [quantized], name=f"{quantized}__Q"),
            helper.make_node(
                "DequantizeLinear", [quantized, scale, zero], [restored], name=f"{restored}__DQ"
            ),
        ]
        node.input[position] = restored

    def weight(self, node: Any, position: int, weights: np.ndarray, axis: int) -> None:
        from onnx import helper, numpy_helper

        name = node.input[position]
        w = weights.astype(np.float64)
        moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        amax = np.abs(moved).max(axis=1)
        scale = _representable_scale(amax / INT8_MAX, self.scale_dtype).astype(np.float64)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.rint(w / scale.reshape(shape)), -INT8_MAX, INT8_MAX).astype(np.int8)
        base = f"{name}__for_{node.name}"
        self.initializers += [
            numpy_helper.from_array(q, f"{base}__int8"),
            numpy_helper.from_array(scale.astype(np.float32), f"{base}__scale"),
            numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{base}__zero_point"),
        ]
        self.before[node.name].append(
            helper.make_node(
                "DequantizeLinear",
                [f"{base}__int8", f"{base}__scale", f"{base}__zero_point"],
                [f"{base}__dq"],
                axis=axis,
                name=f"{base}__DQ",
            )
        )
        node.input[position] = f"{base}__dq"

    def finish(self) -> None:
        graph = self.model.graph
        nodes = []
        for node in graph.node:
            nodes += [*self.before.get(node.name, []), node]
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(self.initializers)


def place_qdq(
    model: Any,
    absmax: Callable[[str], float],
    keep_float: Iterable[str] = (),
    high_precision: str = "fp16",
) -> Any:
    """Return a TensorRT-ready Q/DQ copy of the float32 ``model`` (an ``onnx.ModelProto`` with named
    nodes). ``absmax(tensor)``: calibrated max |value| of an activation;
    ``keep_float``: names of Conv/Gemm nodes left unquantized (their Adds still get residual pairs)."""
    import onnx
    from onnx import numpy_helper

    if high_precision not in HIGH_PRECISIONS:
        raise CxrEdgeError(None, f"unknown --high-precision {high_precision!r}; use fp16 or fp32")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    if high_precision == "fp16":
        model = _with_opset(model, FP16_QDQ_OPSET)
    graph = model.graph
    skip = set(keep_float)
    inits = {t.name: t for t in graph.initializer}
    consumers, producers = graph_links(graph)

    builder = _Builder(model, np.float16 if high_precision == "fp16" else np.float32)
    for node in list(graph.node):
        if node.op_type in WEIGHTED_OPS and node.name not in skip:
            if node.input[0] in inits or node.input[1] not in inits:
                raise CxrEdgeError(None, f"{node.op_type} '{node.name}' must read an activation and a weight")
            builder.activation_pair(node, 0, absmax(node.input[0]))
            axis = 0
            if node.op_type == "Gemm":
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                axis = 0 if trans_b else 1
            builder.weight(node, 1, numpy_helper.to_array(inits[node.input[1]]), axis)
        elif node.op_type == "Add":
            skip_input = residual_input(node, consumers, producers)
            if skip_input is not None:
                builder.activation_pair(node, list(node.input).index(skip_input), absmax(skip_input))
    builder.finish()
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)  # float weights now read through their int8 copies

    if high_precision == "fp16":
        from cxr_edge.quantize.fp16 import convert_fp16

        model = convert_fp16(model)
    else:
        onnx.checker.check_model(model)
    return model


def _with_opset(model: Any, opset: int) -> Any:
    """``model`` at default-domain ``opset`` (the converter's adapters; unchanged when already there)."""
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current >= opset:
        return model
    try:
        return version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises plain RuntimeErrors from C++
        raise CxrEdgeError(None, f"cannot convert the model to opset {opset} ({str(exc)[:200]})") from exc
