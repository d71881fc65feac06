"""Who reads and who writes each tensor of an ONNX graph (Q/DQ placement and checks walk it)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def graph_links(graph: Any) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """``(consumers, producers)`` of an ``onnx.GraphProto``: tensor name -> the nodes reading it
    (in graph order; empty list for none), and tensor name -> the node writing it."""
    consumers: dict[str, list[Any]] = defaultdict(list)
    producers: dict[str, Any] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
        for name in node.output:
            producers[name] = node
    return consumers, producers
