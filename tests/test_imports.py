"""No import cycles in subcoder.pruner and subcoder.server, read from the source with `ast`.

A cycle works until someone moves an import from a function to the top of a module, and then fails
with a half-initialised module; it also means two modules that cannot be understood (or tested) one
without the other. Function-level imports count as edges for that reason: deferring an import hides
a cycle from Python, not from the reader. `if TYPE_CHECKING:` blocks would not count (they never
run), but the code has none.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"subcoder.pruner": ROOT / "pruner", "subcoder.server": ROOT / "server"}


def module_files(packages: dict[str, Path]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (source file, is a package's __init__)."""
    modules = {}
    for name, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            dotted = ".".join((name, *(parts[:-1] if is_package else parts)))
            modules[dotted] = (path, is_package)
    return modules


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth, except under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if not _type_checking_only(node):
            stack.extend(ast.iter_child_nodes(node))


def _known(name: str, modules) -> str | None:
    """The longest prefix of `name` that is one of our modules (`import a.b.c` of a function c)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph(packages: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of `packages` it imports, directly, anywhere in its source."""
    modules = module_files(packages)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [_known(alias.name, modules) for alias in node.names]
            else:
                if node.level:
                    base_parts = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from . import x` and `from .pkg import x` name the submodule x when there is one
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else _known(base, modules)
                           for alias in node.names]
            graph[name].update(t for t in targets if t is not None and t != name)
    return graph


def tangles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components larger than one module (Tarjan): each holds a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(v: str) -> None:  # the graph is a few dozen modules: recursion depth is no concern
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per tangle, as a path that returns to its start."""
    return [_cycle_in(graph, component) for component in tangles(graph)]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module, as a path that returns to its start."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # unreachable for a strongly connected component


def test_no_import_cycles():
    graph = import_graph(PACKAGES)
    lines = []
    for component in tangles(graph):
        cycle = _cycle_in(graph, component)
        lines.append("  " + " -> ".join(cycle))
        if rest := sorted(component - set(cycle)):
            lines.append("    (the same tangle also holds " + ", ".join(rest) + ")")
    assert not lines, "import cycles:\n" + "\n".join(lines)


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The checker itself: relative, absolute, function-level and `from . import x` edges, and a cycle."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub.c import g\n")
    (pkg / "sub" / "__init__.py").write_text("from .c import g\n")
    (pkg / "sub" / "c.py").write_text("import os\nimport demo.pkg.a\nfrom typing import TYPE_CHECKING\n"
                                      "if TYPE_CHECKING:\n    from demo.pkg import d\n")
    (pkg / "d.py").write_text("from demo.pkg.sub import c\nfrom .. import pkg\n")
    graph = import_graph({"demo.pkg": pkg})
    assert graph == {"demo.pkg": set(), "demo.pkg.a": {"demo.pkg.b"}, "demo.pkg.b": {"demo.pkg.sub.c"},
                     "demo.pkg.sub": {"demo.pkg.sub.c"}, "demo.pkg.sub.c": {"demo.pkg.a"},
                     "demo.pkg.d": {"demo.pkg.sub.c", "demo.pkg"}}
    assert cycles(graph) == [["demo.pkg.a", "demo.pkg.b", "demo.pkg.sub.c", "demo.pkg.a"]]
    assert cycles({"x": {"y"}, "y": set()}) == []


def test_the_real_graph_is_read():
    """A few edges that exist today, so an empty graph cannot pass the cycle test."""
    graph = import_graph(PACKAGES)
    assert "subcoder.pruner.prune" in graph["subcoder.pruner.extract"]
    assert "subcoder.pruner.wanda" in graph["subcoder.pruner.prune"]
    assert "subcoder.pruner.evaluation.runner" in graph["subcoder.pruner.evaluation.study"]
