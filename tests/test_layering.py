"""The shape of the tree: no import cycles anywhere, imports point down only, a file per idea.

- api/ takes only the service contract and the wire messages from the layers below;
- supervisor/ takes only ``actors.protocol`` (the small module both sides share) from actors/,
  and only its composition root, ``supervisor.cli``, imports api/;
- actors/ imports neither supervisor/ nor api/; the two dialects never import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "supervisor", "actors")
# What api/ may import from the layers under it (the service contract and the wire types).
ALLOWED_BELOW = {"supervisor.serving.contract", "actors.protocol.messages"}
MAX_LINES = 400


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


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


FILES = {_module(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
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


def test_the_tree_has_no_import_cycle():
    assert len(GRAPH) > 100 and sum(map(len, GRAPH.values())) > 200  # the scan saw the tree
    assert cycle(GRAPH) is None


def _layer(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("name", sorted(n for n in FILES if _layer(n) == "supervisor"))
def test_supervisor_imports_only_the_protocol_of_actors(name):
    wrong = {
        m for m in GRAPH[name] if _layer(m) == "actors" and not m.startswith("actors.protocol")
    }
    assert not wrong, f"{name} imports actor implementation {sorted(wrong)}"
    if not name.startswith("supervisor.cli."):  # the composition root builds the app
        assert not {m for m in GRAPH[name] if _layer(m) == "api"}, f"{name} imports api/"


@pytest.mark.parametrize("name", sorted(n for n in FILES if _layer(n) == "actors"))
def test_actors_import_neither_supervisor_nor_api(name):
    assert not {m for m in GRAPH[name] if _layer(m) in ("supervisor", "api")}, name


@pytest.mark.parametrize("name", sorted(n for n in FILES if _layer(n) == "api"))
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
def test_no_file_is_over_the_limit(name):
    assert len(FILES[name].read_text().splitlines()) <= MAX_LINES, name
