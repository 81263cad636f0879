"""The package import graph has no cycles (issue 9).

The graph is read from the sources with ``ast`` (every ``import``/``from ... import`` of a
``gateway`` module, those under ``if TYPE_CHECKING:`` included: a type-only import is still
a dependency a reader must follow). Two rules:

* between the packages of ``gateway`` (``gateway.sip``, ``gateway.b2bua``, ...; a top-level
  module such as ``gateway.app`` counts as its own package), no cycle: the layers stack one
  way;
* inside ``gateway/sip`` (the sans-I/O core), no cycle between modules either.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gateway"

Graph = dict[str, set[str]]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def known_modules() -> set[str]:
    return {module_name(path) for path in PACKAGE.rglob("*.py")}


def imported(tree: ast.AST, modules: set[str]) -> Iterable[str]:
    """The gateway modules a source file imports (``from pkg import module`` resolved)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "gateway":
                    yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            assert node.level == 0, "relative imports are not used in gateway"
            if node.module.split(".")[0] != "gateway":
                continue
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                yield submodule if submodule in modules else node.module


def module_graph() -> Graph:
    modules = known_modules()
    graph: Graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        graph[module_name(path)] = set(imported(tree, modules)) & modules
    return graph


def package_of(module: str) -> str:
    """``gateway.sip.message`` -> ``gateway.sip``; ``gateway.app`` -> ``gateway.app``."""
    return ".".join(module.split(".")[:2])


def package_graph(modules: Mapping[str, set[str]]) -> Graph:
    graph: Graph = {}
    for source, targets in modules.items():
        if source == "gateway":
            continue
        edges = graph.setdefault(package_of(source), set())
        edges.update(package_of(t) for t in targets if t != "gateway")
    for source, edges in graph.items():
        edges.discard(source)
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def why(graph: Mapping[str, set[str]], component: list[str], modules: Graph) -> list[str]:
    """The module imports behind a package cycle, for the failure message."""
    members = set(component)
    return sorted(
        f"{source} -> {target}"
        for source, targets in modules.items()
        for target in targets
        if package_of(source) in members
        and package_of(target) in members
        and package_of(source) != package_of(target)
    )


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_type_only_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gateway.sip import message\n"
    )
    assert list(imported(ast.parse(source), {"gateway.sip.message"})) == ["gateway.sip.message"]


def test_the_graph_covers_the_package() -> None:
    graph = package_graph(module_graph())
    assert {"gateway.sip", "gateway.b2bua", "gateway.emergency", "gateway.app"} <= set(graph)
    assert "gateway.sip" in graph["gateway.b2bua"]


def test_no_cycle_between_packages() -> None:
    modules = module_graph()
    graph = package_graph(modules)
    found = cycles(graph)
    assert found == [], "\n".join(
        f"cycle {component}: " + "; ".join(why(graph, component, modules)) for component in found
    )


def test_no_cycle_inside_the_sip_core() -> None:
    modules = module_graph()
    sip = {
        source: {t for t in targets if package_of(t) == "gateway.sip" and t != "gateway.sip"}
        for source, targets in modules.items()
        if package_of(source) == "gateway.sip" and source != "gateway.sip"
    }
    assert cycles(sip) == []


def test_the_sip_core_imports_nothing_above_it() -> None:
    modules = module_graph()
    above = sorted(
        f"{source} -> {target}"
        for source, targets in modules.items()
        if package_of(source) == "gateway.sip"
        for target in targets
        if package_of(target) != "gateway.sip"
    )
    assert above == []


#: the node's wiring: it builds the call layer and hands it its parts
WIRING = ("gateway.b2bua", "gateway.app", "gateway.node_sip", "gateway.node_trunks")


def test_only_the_wiring_imports_the_call_layer() -> None:
    """Services and policy (registrar, emergency, presence, stores...) sit below the B2BUA:
    they answer it with their own typed values and never import it."""
    modules = module_graph()
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in modules.items()
        if package_of(source) not in WIRING
        for target in targets
        if package_of(target) == "gateway.b2bua"
    )
    assert upward == []
