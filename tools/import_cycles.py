"""Import circles in a package: its import graph read with `ast`, then Tarjan's strongly
connected components; `make lint` runs it on gateway/ and fails on any circle.

Counted: every import a module runs, at module level or inside a function or class.
Not counted: imports under `if TYPE_CHECKING:` (never run; their `else:` is counted),
imports of modules outside the package, and the parent packages Python imports on the
way. `from pkg import name` imports the module pkg.name when there is one, else pkg;
relative imports are resolved against the importing module's package.

Usage: python tools/import_cycles.py [PACKAGE_DIR]   (default: the repository's gateway/)
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import deque
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[1] / "gateway"


def module_files(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """Every module under `package_dir` by dotted name: (its file, whether it is a package)."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module → the modules of the same package it imports (itself left out)."""
    modules = module_files(package_dir)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_bytes(), filename=str(path))
        graph[name] = set(imported_modules(tree, package, modules)) - {name}
    return graph


def imported_modules(tree: ast.AST, package: str, modules: Collection[str]) -> Iterator[str]:
    """The modules among `modules` that the imports in `tree` (a module of `package`) run."""
    for node in run_nodes(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node, package)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    yield submodule
                elif base in modules:
                    yield base


def run_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of `tree` except the bodies of `if TYPE_CHECKING:` (their `else:` runs)."""
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.expr) -> bool:
    """`TYPE_CHECKING` or `typing.TYPE_CHECKING`."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def absolute(node: ast.ImportFrom, package: str) -> str:
    """The module a `from ... import` names: `.` is `package`, `..` its parent, and so on."""
    if node.level == 0:
        return node.module or ""
    parts = package.split(".")
    base = parts[: max(len(parts) - (node.level - 1), 0)]
    return ".".join([*base, node.module] if node.module else base)


def circles(graph: Mapping[str, Collection[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm),
    each sorted; the recursion is as deep as the longest import chain."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:  # the root of a component: the stack down to it
            component: list[str] = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def shortest_loop(graph: Mapping[str, Collection[str]], component: Sequence[str]) -> list[str]:
    """A shortest import path from the component's first module back to it, both ends given."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for successor in sorted(set(graph[node]) & members):
            if successor == start:
                path = [start, node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return path[::-1]
            if successor not in came_from:
                came_from[successor] = node
                queue.append(successor)
    raise ValueError(f"{start} is in no import circle")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Import circles in a package (exit 1: some).")
    parser.add_argument("package", nargs="?", type=Path, default=GATEWAY)
    args = parser.parse_args(argv)
    graph = import_graph(args.package)
    found = circles(graph)
    for component in found:
        print(f"import circle of {len(component)} modules: {', '.join(component)}")
        print(f"  for example: {' -> '.join(shortest_loop(graph, component))}")
    if found:
        return 1
    print(f"no import circles in {len(graph)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
