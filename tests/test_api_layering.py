"""The shape of api/: no import cycles, dialects apart, and only the contract from below."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

API = Path(__file__).resolve().parent.parent / "api"
# What api/ may import from the layers under it (the service contract and the wire types).
ALLOWED_BELOW = {"supervisor.serving.contract", "actors.protocol.messages"}
MAX_LINES = 400


def _module(path: Path) -> str:
    return ".".join(path.relative_to(API.parent).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, ``TYPE_CHECKING`` blocks and function bodies included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


FILES = {_module(p): p for p in sorted(API.rglob("*.py"))}
IMPORTS = {name: _imports(path) for name, path in FILES.items()}
GRAPH = {name: {m for m in found if m in FILES and m != name} for name, found in IMPORTS.items()}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        if state.get(node) == 1:
            return [*path[path.index(node) :], node]
        if state.get(node) == 2:
            return None
        state[node] = 1
        for dep in sorted(graph[node]):
            if found := visit(dep, [*path, node]):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if found := visit(node, []):
            return found
    return None


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_api_has_no_import_cycle():
    assert len(GRAPH) > 20 and sum(map(len, GRAPH.values())) > 40  # the scan saw the package
    assert cycle(GRAPH) is None


@pytest.mark.parametrize("name", sorted(FILES))
def test_api_imports_only_the_contract_from_below(name):
    below = {
        m
        for m in IMPORTS[name]
        if m.split(".")[0] in ("supervisor", "actors") and m.rpartition(".")[0] not in ALLOWED_BELOW
    }
    assert below <= ALLOWED_BELOW, f"{name} imports {sorted(below - ALLOWED_BELOW)}"


@pytest.mark.parametrize(("dialect", "other"), [("openai", "ollama"), ("ollama", "openai")])
def test_a_dialect_never_imports_the_other(dialect, other):
    for name, found in IMPORTS.items():
        if name.startswith(f"api.{dialect}.") or name.startswith("api.edge."):
            assert not any(m.startswith(f"api.{other}") for m in found), name


@pytest.mark.parametrize("name", sorted(FILES))
def test_no_api_file_is_over_the_limit(name):
    assert len(FILES[name].read_text().splitlines()) <= MAX_LINES, name
