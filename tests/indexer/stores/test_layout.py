"""The stores are parts that own their state (STYLE.md 19), not one class spread over mixins: no
``Mixin`` class, no module over 320 code lines, and no import cycle among the stores' modules (type-only
imports included). On b690aef: three mixins, ``faiss/{store,index,search,writes}.py`` in a cycle, and
``redis/store.py`` 521 code lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

STORES = Path(__file__).resolve().parents[3] / "indexer" / "stores"
LIMIT = 320


def _module(path: Path) -> str:
    parts = path.relative_to(STORES.parents[1]).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def code_lines(path: Path) -> int:
    """Lines that are not blank, comments or docstrings."""
    source = path.read_text(encoding="utf-8")
    docs: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.update(range(first.lineno, first.end_lineno + 1))
    lines = source.splitlines()
    return sum(
        1
        for i, line in enumerate(lines, 1)
        if line.strip() and not line.strip().startswith("#") and i not in docs
    )


def imports(path: Path) -> set[str]:
    """Every module of indexer.stores that ``path`` imports, anywhere in it (type-only imports too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("indexer.stores")}


FILES = sorted(p for sub in ("faiss", "redis") for p in (STORES / sub).glob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_store_module_is_over_320_code_lines_or_a_mixin(path):
    assert code_lines(path) <= LIMIT
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert not [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and "Mixin" in n.name]


def test_the_stores_import_one_way():
    modules = {_module(p): p for p in STORES.rglob("*.py")}
    graph = {m: {i for i in imports(p) if i in modules and i != m} for m, p in modules.items()}
    # Depth-first search for a back edge.
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, " -> ".join([*path, m, n])
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_the_folder_knows_no_faiss_and_the_index_no_folder():
    folder = imports(STORES / "faiss" / "folder.py")
    index = imports(STORES / "faiss" / "index.py")
    assert not [m for m in folder if m.split(".")[-1] in ("index", "kinds", "rerank", "gpu", "store")]
    tree = ast.parse((STORES / "faiss" / "folder.py").read_text(encoding="utf-8"))
    top = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "faiss" not in top
    assert not [m for m in index if m.split(".")[-1] in ("folder", "shards", "state", "store", "opening")]
