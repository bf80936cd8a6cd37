"""Imports run one way: the packages of ticketlab form a DAG (lazy imports inside functions
included), with the layering the README's layout describes."""

from __future__ import annotations

import ast
from pathlib import Path

import ticketlab

ROOT = Path(ticketlab.__file__).parent
#: Modules everything may use and that use none of the packages above them.
FOUNDATION = {"errors", "validate", "files", "bits", "memory", "masks", "select", "groups", "steps", "seeding",
              "targets", "devices", "runs", "densities", "flops"}
#: package -> packages it must never import, even lazily.
FORBIDDEN = {
    "methods": {"train", "units", "lottery", "experiments", "llm", "deploy", "cli", "report"},
    "train": {"units", "lottery", "experiments", "llm", "deploy", "cli"},
    "units": {"lottery", "experiments", "llm", "deploy", "cli"},
    "lottery": {"experiments", "llm", "deploy", "cli"},
    "experiments": {"llm", "deploy", "cli"},
    "llm": {"deploy", "units", "lottery", "experiments", "cli"},
    "analysis": {"llm", "deploy", "cli"},
}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def package_graph() -> dict[str, set[str]]:
    """Top-level unit of ticketlab (package or module) -> the units it imports anywhere in its code."""
    edges: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        source = ".".join(parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                targets = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            elif node.level:
                base = parts if is_package else parts[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{target}.{a.name}" for a in node.names] if target == "ticketlab" else [target]
            else:
                targets = [node.module or ""]
            for target in targets:
                if target.startswith("ticketlab.") and _top(target) != _top(source):
                    edges.setdefault(_top(source), set()).add(_top(target))
    return edges


def test_the_package_graph_has_no_cycle():
    graph = package_graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path + [node, nxt])
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_layers_import_downwards_only():
    graph = package_graph()
    for package, forbidden in FORBIDDEN.items():
        assert not graph.get(package, set()) & forbidden, (package, graph[package] & forbidden)
    for module in FOUNDATION:
        assert graph.get(module, set()) <= FOUNDATION, (module, graph[module] - FOUNDATION)
    assert {p for p, deps in graph.items() if "cli" in deps} <= {"__main__"}


def test_the_checker_sees_lazy_imports(tmp_path, monkeypatch):
    """A function-level import counts: a planted one from masks up to lottery is reported."""
    package = tmp_path / "ticketlab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "masks.py").write_text("def f():\n    from .lottery import imp\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", package)
    assert package_graph() == {"masks": {"lottery"}}
