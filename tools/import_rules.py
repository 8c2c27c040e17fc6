"""The package's layering, checked: which parts of gateway/ may not import which.

The README's "Layout" describes these habits; `make lint` runs this script and
fails on any import that breaks one (module-level or inside a function;
`if TYPE_CHECKING:` imports are not run, so they are not counted):

- the decisions (gateway/pipeline/) import no server or HTTP library and no SQL:
  they judge plain values, so `explain`, tests and any server can call them;
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
from collections.abc import Iterator, Sequence
from pathlib import Path

from tools.import_cycles import GATEWAY, absolute, module_files, run_nodes

# (importing modules, forbidden imports, why): a name stands for itself and what is under it
RULES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "gateway.pipeline",
        ("aiohttp", "sqlalchemy", "gateway.store", "gateway.services", "gateway.handlers"),
        "decisions judge plain values",
    ),
    ("gateway.handlers", ("gateway.proxy",), "handlers ask the runtime, not the proxy"),
    (
        "gateway.proxy",
        ("gateway.store", "gateway.services", "gateway.handlers", "gateway.middleware"),
        "the proxy is handed what it needs",
    ),
    ("gateway.middleware", ("gateway.handlers",), "stages do not call handlers"),
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
    """One line per import that breaks a rule: FILE:LINE: MODULE imports NAME (why)."""
    found = []
    for name, (path, is_package) in module_files(package_dir).items():
        package = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_bytes(), filename=str(path))
        for importer, forbidden, why in RULES:
            if not under(name, importer):
                continue
            for imported, line in imports(tree, package):
                for prefix in forbidden:
                    if under(imported, prefix):
                        found.append(f"{path}:{line}: {name} imports {imported} ({why})")
    return found


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
