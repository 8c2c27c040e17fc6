"""tools/import_rules.py: the layering of gateway/ holds, and a broken rule is reported."""

from __future__ import annotations

from pathlib import Path

from tools.import_rules import broken


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "gateway" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "gateway"


def test_the_gateway_keeps_its_layering() -> None:
    assert broken(Path(__file__).resolve().parents[2] / "gateway") == []


def test_a_handler_importing_the_proxy_and_a_decision_importing_aiohttp_are_reported(
    tmp_path: Path,
) -> None:
    package = write(
        tmp_path,
        {
            "__init__.py": "",
            "proxy/__init__.py": "",
            "proxy/pool.py": "",
            "handlers/__init__.py": "",
            "handlers/admin.py": "def later():\n    from gateway.proxy import pool\n",
            "pipeline/__init__.py": "",
            "pipeline/policy.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from aiohttp import web\n"  # never run: allowed
                "from aiohttp.web import Request\n"
            ),
        },
    )
    found = broken(package)
    assert len(found) == 2, found
    assert any("gateway.handlers.admin imports gateway.proxy.pool" in line for line in found)
    assert any(
        line.endswith(
            "gateway.pipeline.policy imports aiohttp.web.Request (decisions judge plain values)"
        )
        for line in found
    )


def test_a_decision_reaching_aiohttp_through_another_module_is_reported(tmp_path: Path) -> None:
    package = write(
        tmp_path,
        {
            "__init__.py": "",
            "runtime.py": "import aiohttp\n",
            "pipeline/__init__.py": "",
            "pipeline/explain.py": "from gateway.runtime import thing\n",
        },
    )
    found = broken(package)
    assert len(found) == 1, found
    assert found[0].endswith(
        "gateway.pipeline.explain imports aiohttp (through gateway.pipeline.explain -> "
        "gateway.runtime) (decisions judge plain values)"
    )
