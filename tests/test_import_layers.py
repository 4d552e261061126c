"""Imports flow one way (docs/architecture.md): cli -> workflow -> foundation -> base, with no cycle anywhere.

Every ``import attnseg.X`` / ``from attnseg.X import ...`` in ``src/attnseg`` (function-level imports included) is
an edge between top-level units (a subpackage or a module). The test fails on an edge that goes up a level and on a
cycle between units, so a new module must be placed in ``LEVELS`` before it can be imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "attnseg"

LEVELS = {
    # base: the standard library and yaml only
    "errors": 0,
    "kinds": 0,
    "io": 0,
    "config": 0,
    "allocator": 0,
    # foundation: formats, models and pure functions
    "layers": 1,
    "models": 1,
    "data": 1,
    "metrics": 1,
    "runs": 1,
    # workflow: may use each other without cycles
    "training": 2,
    "inference": 2,
    "evaluation": 2,
    "export": 2,
    "bench": 2,
    "demo": 2,
    "study": 2,
    "serve": 2,
    # the command line: imported by nothing
    "cli": 3,
    # the public API (attnseg/__init__.py) re-exports what users call
    "__init__": 4,
}


def _unit(path: Path, package: Path = PACKAGE) -> str:
    return path.relative_to(package).parts[0].removesuffix(".py")


def import_edges(package: Path = PACKAGE) -> set[tuple[str, str, str]]:
    """``(source unit, target unit, file:line)`` for every attnseg import between different units."""
    edges = set()
    for path in sorted(package.rglob("*.py")):
        src = _unit(path, package)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "attnseg" and len(parts) > 1 and parts[1] != src:
                    edges.add((src, parts[1], f"{path.relative_to(package)}:{node.lineno}"))
    return edges


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_unit_has_a_level():
    units = {_unit(p) for p in PACKAGE.rglob("*.py")} | {_unit(p) for p in PACKAGE.iterdir() if p.is_dir()}
    units = {u for u in units if u not in ("__pycache__", "demo_data")}
    assert units <= set(LEVELS), f"place these in LEVELS (docs/architecture.md): {sorted(units - set(LEVELS))}"


def test_no_upward_import():
    upward = sorted(
        f"{where}: {src} (level {LEVELS[src]}) imports {dst} (level {LEVELS[dst]})"
        for src, dst, where in import_edges()
        if LEVELS.get(dst, 0) > LEVELS.get(src, 0)
    )
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for src, dst, _ in import_edges():
        graph.setdefault(src, set()).add(dst)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


@pytest.mark.parametrize(
    "graph, cycle",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"x"}, "x": {"y"}, "y": {"x"}}, ["x", "y", "x"]),
    ],
)
def test_cycle_finder_finds_cycles(graph, cycle):
    assert find_cycle(graph) == cycle


def test_edges_see_function_level_imports(tmp_path):
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "t.py").write_text("def f():\n    from attnseg.cli.main import app\n")
    assert import_edges(tmp_path) == {("training", "cli", "training/t.py:2")}
