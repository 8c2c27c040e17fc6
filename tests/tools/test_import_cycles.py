"""tools/import_cycles.py: circles found through function-level and relative imports,
`if TYPE_CHECKING:` imports ignored, on small packages written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.import_cycles import circles, import_graph, main

# pkg.a -> pkg.b at module level, pkg.b -> pkg.a inside a function (relative): a circle.
# pkg.c -> pkg.d under TYPE_CHECKING only, pkg.d -> pkg.c: no circle.
# pkg.sub -> pkg.sub.e (relative, in __init__), pkg.sub.e -> pkg.sub (`from pkg.sub import
# name`, name not a module): a circle.
CIRCULAR = {
    "__init__.py": "",
    "a.py": "from pkg import b\n",
    "b.py": "import json\n\n\ndef later():\n    from . import a\n\n    return a, json\n",
    "c.py": (
        "from typing import TYPE_CHECKING\n\n"
        "if TYPE_CHECKING:\n    from pkg.d import Thing\nelse:\n    Thing = None\n"
    ),
    "d.py": "import pkg.c\nfrom pkg.c import Thing\n",
    "sub/__init__.py": "from .e import helper\n",
    "sub/e.py": "def helper():\n    from pkg.sub import VALUE\n\n    return VALUE\n",
}


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_the_graph_follows_function_level_and_relative_imports(tmp_path: Path) -> None:
    graph = import_graph(write_package(tmp_path, CIRCULAR))
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.a"},
        "pkg.c": set(),  # the TYPE_CHECKING import never runs
        "pkg.d": {"pkg.c"},
        "pkg.sub": {"pkg.sub.e"},
        "pkg.sub.e": {"pkg.sub"},
    }


def test_circles_are_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = write_package(tmp_path, CIRCULAR)
    assert circles(import_graph(package)) == [["pkg.a", "pkg.b"], ["pkg.sub", "pkg.sub.e"]]
    assert main([str(package)]) == 1
    assert capsys.readouterr().out == (
        "import circle of 2 modules: pkg.a, pkg.b\n"
        "  for example: pkg.a -> pkg.b -> pkg.a\n"
        "import circle of 2 modules: pkg.sub, pkg.sub.e\n"
        "  for example: pkg.sub -> pkg.sub.e -> pkg.sub\n"
    )


def test_no_circles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    acyclic = {**CIRCULAR, "b.py": "import json\n", "sub/e.py": "VALUE = 1\n"}
    package = write_package(tmp_path, acyclic)
    assert circles(import_graph(package)) == []
    assert main([str(package)]) == 0
    assert capsys.readouterr().out == "no import circles in 7 modules\n"


def test_a_longer_circle_is_one_component() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert circles(graph) == [["a", "b", "c"]]
