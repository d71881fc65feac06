"""The package's shape: no import cycle between cxr_edge modules, commands stay thin.

The import graph is read from the source (every ``import`` statement, also inside functions and
``TYPE_CHECKING`` blocks, since a lazy import is still a dependency), so a cycle hidden by a
function-level import fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cxr_edge"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the cxr_edge modules it names in an import (a name that is a submodule counts
    as that submodule)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                if base not in modules:
                    continue
                named = {f"{base}.{a.name}" for a in node.names} & set(modules)
                deps |= named or {base}
                if len(named) < len(node.names):
                    deps.add(base)
        deps.discard(name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_reader_sees_imports_inside_functions() -> None:
    graph = import_graph()
    assert "cxr_edge.pipeline" in graph["cxr_edge.commands.infer"]  # a function-level import
    assert "cxr_edge.prediction" in graph["cxr_edge.report"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_inside_the_package() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_only_commands_import_commands_and_the_cli() -> None:
    """The library never reaches up into the command layer."""
    for name, deps in import_graph().items():
        if name.startswith("cxr_edge.commands") or name in ("cxr_edge.cli", "cxr_edge.__main__"):
            continue
        upward = {d for d in deps if d.startswith("cxr_edge.commands") or d == "cxr_edge.cli"}
        assert not upward, f"{name} imports {sorted(upward)}"


def test_prediction_sits_low() -> None:
    """``Prediction`` is a plain value: it needs nothing from report, render, outputs or pipeline."""
    graph = import_graph()
    seen: set[str] = set()
    frontier = ["cxr_edge.prediction"]
    while frontier:
        for dep in graph[frontier.pop()]:
            if dep not in seen:
                seen.add(dep)
                frontier.append(dep)
    assert not seen & {"cxr_edge.report", "cxr_edge.render", "cxr_edge.outputs", "cxr_edge.pipeline"}
