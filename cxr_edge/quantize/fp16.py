"""Typed mixed-precision FP16 ONNX with float32 inputs and outputs, written with ``onnx`` alone.

Every float32 initializer, Constant and Cast target becomes float16; a Cast after each graph
input and before each graph output keeps the I/O float32 (the runtime feeds float32 patches).
Ops listed in ``keep_fp32`` run in float32 between Casts, their weights stay float32.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from cxr_edge.errors import CxrEdgeError

#: float16 overflows at 65504; the global pools sum up to 1280 channels of 2x2 maps, fine in fp16,
#: so nothing is kept in fp32 by default. Pass e.g. ("Gemm",) to keep the classifier in fp32.
DEFAULT_KEEP_FP32: tuple[str, ...] = ()


def _fp16_tensor(tensor: Any) -> Any:
    from onnx import numpy_helper

    array = numpy_helper.to_array(tensor)
    if np.isfinite(array).all() and np.abs(array).max(initial=0.0) > 65504:
        raise CxrEdgeError(None, f"tensor '{tensor.name}' has values beyond the float16 range")
    return numpy_helper.from_array(array.astype(np.float16), tensor.name)


def convert_fp16(model: Any, keep_fp32: Iterable[str] = DEFAULT_KEEP_FP32) -> Any:
    """Return a float16 copy of ``model`` (an ``onnx.ModelProto``) with float32 graph I/O."""
    import onnx
    from onnx import TensorProto, helper

    keep = set(keep_fp32)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    if any(n.op_type in ("If", "Loop", "Scan") for n in graph.node):
        raise CxrEdgeError(None, "FP16 conversion does not handle subgraphs (If/Loop/Scan)")
    float_names = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    inferred = onnx.shape_inference.infer_shapes(model)
    for info in [*inferred.graph.value_info, *graph.input, *graph.output]:
        if info.type.tensor_type.elem_type == TensorProto.FLOAT:
            float_names.add(info.name)

    used_by_fp16 = {i for n in graph.node if n.op_type not in keep for i in n.input}
    for init in graph.initializer:
        # Weights read only by fp32 ops stay fp32; the rest become fp16.
        if init.data_type == TensorProto.FLOAT and init.name in used_by_fp16:
            init.CopyFrom(_fp16_tensor(init))

    fp32_inits = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    new_nodes = []
    rename: dict[str, str] = {}
    for graph_input in graph.input:
        if graph_input.type.tensor_type.elem_type == TensorProto.FLOAT:
            rename[graph_input.name] = graph_input.name + "__fp16"
            new_nodes.append(
                helper.make_node(
                    "Cast",
                    [graph_input.name],
                    [rename[graph_input.name]],
                    to=TensorProto.FLOAT16,
                    name=graph_input.name + "__cast_in",
                )
            )
    outputs = {o.name for o in graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT}
    for node in graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        if node.op_type == "Cast" and node.op_type not in keep:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(_fp16_tensor(attr.t))
        if node.op_type in keep:
            pre, post = [], []
            for position, name in enumerate(node.input):
                if name in float_names and name and name not in fp32_inits:
                    cast_out = f"{name}__fp32_for_{node.name or position}"
                    pre.append(helper.make_node("Cast", [name], [cast_out], to=TensorProto.FLOAT))
                    node.input[position] = cast_out
            for position, name in enumerate(node.output):
                if name in float_names:
                    inner = f"{name}__fp32"
                    node.output[position] = inner
                    target = TensorProto.FLOAT if name in outputs else TensorProto.FLOAT16
                    post.append(helper.make_node("Cast", [inner], [name], to=target))
            new_nodes += [*pre, node, *post]
            continue
        for position, name in enumerate(node.output):
            if name in outputs:
                inner = name + "__fp16"
                node.output[position] = inner
                new_nodes.append(node)
                new_nodes.append(
                    helper.make_node("Cast", [inner], [name], to=TensorProto.FLOAT, name=name + "__cast_out")
                )
                break
        else:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    onnx.checker.check_model(model)
    return model
