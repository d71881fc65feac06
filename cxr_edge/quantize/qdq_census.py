"""Count a Q/DQ graph's quantization nodes by kind (printed by ``quantize``, used in reviews).

Kinds: ``activation pairs`` (DequantizeLinear of a QuantizeLinear output, i.e. a quantized
activation) split by what they feed, DequantizeLinear of constant int8 weights and of int32
constants (quantized biases, which TensorRT's parser rejects), DequantizeLinear outputs read by
more than one node, and non-zero zero points.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from cxr_edge.quantize.graph import graph_links

WEIGHTED = frozenset({"Conv", "Gemm", "MatMul", "ConvTranspose"})


def qdq_census(model: Any) -> dict[str, int]:
    """Counts for an ``onnx.ModelProto`` (keys as in the module docstring; zero counts included)."""
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers, _ = graph_links(graph)
    counts: Counter[str] = Counter(
        {
            "QuantizeLinear": 0,
            "DequantizeLinear": 0,
            "activation pairs": 0,
            "activation pairs into Conv/Gemm": 0,
            "activation pairs into Add": 0,
            "activation pairs into other ops only": 0,
            "int8 weight DequantizeLinear": 0,
            "int32 DequantizeLinear (quantized biases)": 0,
            "shared DequantizeLinear": 0,
            "non-zero zero points": 0,
        }
    )
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        counts[node.op_type] += 1
        zero = inits.get(node.input[2]) if len(node.input) > 2 else None
        if zero is not None and np.any(numpy_helper.to_array(zero) != 0):
            counts["non-zero zero points"] += 1
        if node.op_type != "DequantizeLinear":
            continue
        source = node.input[0]
        if source in inits:
            kind = inits[source].data_type
            if kind == TensorProto.INT32:
                counts["int32 DequantizeLinear (quantized biases)"] += 1
            elif kind in (TensorProto.INT8, TensorProto.UINT8):
                counts["int8 weight DequantizeLinear"] += 1
            continue
        readers = consumers.get(node.output[0], [])
        counts["activation pairs"] += 1
        types = {r.op_type for r in readers}
        if len(readers) > 1:
            counts["shared DequantizeLinear"] += 1
        if types & WEIGHTED:
            counts["activation pairs into Conv/Gemm"] += 1
        elif "Add" in types:
            counts["activation pairs into Add"] += 1
        else:
            counts["activation pairs into other ops only"] += 1
    return dict(counts)
