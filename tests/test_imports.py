"""No import circles among our own modules (issue 24): every import counts, at module level or inside a function.

A circle that only works because one side imports inside a function still ties the two modules together:
neither can be read, tested or moved alone. The graph is built from the source with ast (nothing is imported).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

pytestmark = pytest.mark.pure

REPO = Path(__file__).resolve().parent.parent
# top-level package name -> its folder in the repository (setup.cfg package_dir)
PACKAGES = {"bert_squad": REPO / "bert_squad", "bert_squad_client": REPO / "client",
            "bert_squad_export": REPO / "export"}


def module_files(packages: Dict[str, Path]) -> Dict[str, Path]:
    """Dotted module name -> source file, for every .py file under each package folder."""
    modules = {}
    for package, root in packages.items():
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.py")):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _known(name: str, modules: Dict[str, Path]) -> "str | None":
    """The longest prefix of dotted `name` that is one of our modules."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """Our modules that `module` imports anywhere in its file: `import a.b`, `from a import b` (b a module or a
    name in a), relative imports resolved against the module's package."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names]  # a submodule, else base itself
        else:
            continue
        for target in targets:
            known = _known(target, modules)
            if known and known != module:
                found.add(known)
    return found


def import_graph(packages: Dict[str, Path]) -> Dict[str, Set[str]]:
    modules = module_files(packages)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One circle (a -> b -> ... -> a) through each group of modules that import each other (Tarjan's
    strongly connected components, then a shortest way around inside the group)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    groups: List[Set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_shortest_circle(graph, group) for group in groups]


def _shortest_circle(graph: Dict[str, Set[str]], group: Set[str]) -> List[str]:
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first, inside the group, back to start
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{sorted(group)} is strongly connected but has no circle through {start}")


def test_our_modules_import_each_other_in_no_circle():
    found = cycles(import_graph(PACKAGES))
    assert not found, "import circles (break each by moving what both sides need into a module of its own):\n" + \
        "\n".join(" -> ".join(circle) for circle in found)


def test_the_check_sees_function_level_relative_and_from_package_imports(tmp_path):
    """The checker itself: a circle closed only by an import inside a function, written relatively or as
    `from package import module`, is still found."""
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "a.py").write_text("from pkg.sub import b\n")
    (root / "sub" / "b.py").write_text("def f():\n    from .c import VALUE\n    return VALUE\n")
    (root / "sub" / "c.py").write_text("import os\n\ndef g():\n    from .. import a\n    return a\n")
    (root / "sub" / "d.py").write_text("from pkg import a\n")  # into the circle, not part of it
    graph = import_graph({"pkg": root})
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.c"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]]
    (root / "sub" / "c.py").write_text("import os\n")
    assert cycles(import_graph({"pkg": root})) == []
