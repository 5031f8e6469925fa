"""The package's layers, as docs/architecture.md draws them: no import loops, Flask only at the edge.

Read from the source with `ast` (module-level imports only: a function that imports on first use, as the
command line does, cannot create a loop at import time).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cds"
FLASK_ALLOWED = ("cds.web", "cds.app", "cds.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports() -> dict[str, set[str]]:
    """Module -> every module it imports at module level (cds modules resolved to the module, not a name)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    imported.add(candidate if candidate in modules else node.module)
        graph[name] = imported
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_module_imports_itself_through_others() -> None:
    graph = top_level_imports()
    assert len(graph) > 30
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_loop() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_only_the_web_edge_imports_flask() -> None:
    offenders = [
        name
        for name, imported in top_level_imports().items()
        if not name.startswith(FLASK_ALLOWED)
        and any(i.split(".")[0] in {"flask", "werkzeug"} for i in imported)
    ]
    assert offenders == []


def test_storage_knows_nothing_of_fhir_or_rules() -> None:
    for name, imported in top_level_imports().items():
        if name.startswith("cds.storage"):
            assert not {i for i in imported if i.startswith(("cds.fhir", "cds.clinical", "cds.web"))}, name
