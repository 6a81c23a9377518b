"""mmmamba's package layout: the import graph between its packages has no cycle, and the library never imports
its command line (``mmmamba.cli``) or a script, recipe or test.

Every ``import`` in every ``mmmamba/**/*.py`` counts, those inside functions (and under ``TYPE_CHECKING``) too:
a lazy import is still a dependency. Modules map to their package: ``mmmamba.ops.ssd`` -> ``mmmamba.ops``; a
top-level module (``mmmamba.io``, ``mmmamba.errors``) is a package of its own, and ``mmmamba/__init__.py`` is
``mmmamba``."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mmmamba"

# Library modules that may import mmmamba.cli: `python -m mmmamba` runs the command line.
ENTRY_POINTS = {"mmmamba.__main__"}

# Top-level names that are not the library: nothing in mmmamba/ may import them.
NOT_LIBRARY = ("scripts", "recipes", "tests")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    """``mmmamba.ops.ssd`` -> ``mmmamba.ops``; ``mmmamba.io`` and ``mmmamba`` stay as they are."""
    return ".".join(module.split(".")[:2])


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(module: str) -> list[tuple[str, int]]:
    """Every module ``module`` imports (absolute, relative resolved), with the line of the import."""
    path = MODULES[module]
    here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for a in node.names:  # `from pkg import sub` imports the module pkg.sub when there is one
                sub = f"{source}.{a.name}"
                found.append((sub if sub in MODULES else source, node.lineno))
    return found


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importer package, imported package) -> where: ``mmmamba/x/y.py:LINE imports mmmamba.z.w``."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for module, path in MODULES.items():
        for target, line in imports(module):
            if target.split(".")[0] != "mmmamba":
                continue
            a, b = package_of(module), package_of(target)
            if a != b:
                edges[(a, b)].append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return edges


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w) :] + [w]
            if w not in state and (cycle := visit(w)):
                return cycle
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (cycle := visit(v)):
            return cycle
    return None


def graph_of(edges) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    return graph


def describe(cycle: list[str], edges) -> str:
    steps = [f"  {a} -> {b}: {edges[(a, b)][0]}" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


def test_the_graph_sees_lazy_and_relative_imports():
    edges = package_edges()
    assert ("mmmamba.layers", "mmmamba.ops") in edges  # module-level relative imports
    assert ("mmmamba.cli", "mmmamba.formats") in edges  # imports inside the handlers
    assert ("mmmamba.cli", "mmmamba") in edges  # `from .. import __version__`
    assert ("mmmamba.__main__", "mmmamba.cli") in edges


def test_no_package_import_cycles():
    edges = package_edges()
    cycle = find_cycle(graph_of(edges))
    assert cycle is None, "package import cycle (move the code to the lower package):\n" + describe(cycle, edges)


def test_the_library_does_not_import_the_command_line_or_scripts():
    bad = []
    for module, path in MODULES.items():
        if package_of(module) == "mmmamba.cli" or module in ENTRY_POINTS:
            continue
        for target, line in imports(module):
            top = target.split(".")[0]
            if package_of(target) == "mmmamba.cli" or top in NOT_LIBRARY:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "the library imports the command line or a script:\n" + "\n".join(bad)
