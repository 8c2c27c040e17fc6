"""The package's layering, checked: which parts of gateway/ may not import which.

The README's "Layout" describes these habits; `make lint` runs this script and
fails on any import that breaks one (module-level or inside a function;
`if TYPE_CHECKING:` imports are not run, so they are not counted):

- the decisions (gateway/pipeline/) import no server or HTTP library and no SQL,
  not even through the modules they import: they judge plain values, so
  `explain`, tests and any server (the lean one too) can call them;
- handlers never import the proxy (they ask the runtime for upstream status);
- the proxy never reaches the store, the services or the handlers (what it needs,
  such as the token quota store, is handed to it);
- middleware never imports handlers.

Usage: python tools/import_rules.py [PACKAGE_DIR]   (default: the repository's gateway/)
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from tools.import_cycles import GATEWAY, absolute, module_files, run_nodes

# (importing modules, forbidden imports, why, whether what they import counts too): a
# name stands for itself and what is under it
RULES: tuple[tuple[str, tuple[str, ...], str, bool], ...] = (
    (
        "gateway.pipeline",
        ("aiohttp", "sqlalchemy", "gateway.store", "gateway.services", "gateway.handlers"),
        "decisions judge plain values",
        True,
    ),
    ("gateway.handlers", ("gateway.proxy",), "handlers ask the runtime, not the proxy", False),
    (
        "gateway.proxy",
        ("gateway.store", "gateway.services", "gateway.handlers", "gateway.middleware"),
        "the proxy is handed what it needs",
        False,
    ),
    ("gateway.middleware", ("gateway.handlers",), "stages do not call handlers", False),
)


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def imports(tree: ast.AST, package: str) -> Iterator[tuple[str, int]]:
    """Every module name an import in `tree` runs, with its line (absolute names)."""
    for node in run_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node, package)
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def broken(package_dir: Path) -> list[str]:
    """One line per import that breaks a rule: FILE:LINE: MODULE imports NAME (why), with
    the way through other modules when the rule counts what they import."""
    modules = module_files(package_dir)
    direct: dict[str, list[tuple[str, int]]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_bytes(), filename=str(path))
        direct[name] = list(imports(tree, package))
    found = []
    for name in modules:
        for importer, forbidden, why, transitive in RULES:
            if not under(name, importer):
                continue
            for via, imported, line in _reached(name, direct, modules, transitive):
                if any(under(imported, prefix) for prefix in forbidden):
                    path = modules[via[-1]][0]
                    way = f" (through {' -> '.join(via)})" if len(via) > 1 else ""
                    found.append(f"{path}:{line}: {name} imports {imported}{way} ({why})")
    return found


def _reached(
    start: str,
    direct: dict[str, list[tuple[str, int]]],
    modules: Mapping[str, object],
    transitive: bool,
) -> Iterator[tuple[list[str], str, int]]:
    """(the modules on the way, an imported name, its line) for `start`'s imports, and
    when `transitive`, those of every module of the package it reaches (first way found)."""
    ways = {start: [start]}
    pending = [start]
    while pending:
        module = pending.pop(0)
        for imported, line in direct[module]:
            yield ways[module], imported, line
            if not transitive:
                continue
            reached = _module_of(imported, modules)
            if reached is not None and reached not in ways:
                ways[reached] = [*ways[module], reached]
                pending.append(reached)


def _module_of(name: str, modules: Mapping[str, object]) -> str | None:
    """The package's module an imported name lives in (`a.b.c` → `a.b` when c is a name)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Layering rules of gateway/ (exit 1: broken).")
    parser.add_argument("package", nargs="?", type=Path, default=GATEWAY)
    args = parser.parse_args(argv)
    found = broken(args.package)
    for line in found:
        print(line)
    if found:
        return 1
    print(f"the layering holds ({len(RULES)} rules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
