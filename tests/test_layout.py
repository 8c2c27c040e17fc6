"""The tests mirror the package: each folder of tests/ is named after a package of gateway/."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# folders of tests/ that test something outside gateway/ (a top-level folder of that name)
OUTSIDE = {"tools", "deploy"}


def test_each_test_folder_names_a_package() -> None:
    packages = {p.parent.name for p in (REPO / "gateway").glob("*/__init__.py")}
    folders = {p.name for p in (REPO / "tests").iterdir() if (p / "__init__.py").exists()}
    assert folders, "tests/ has no folders"
    assert folders - packages - OUTSIDE == set(), "a tests/ folder with no gateway/ package"
    for folder in folders & OUTSIDE:
        assert (REPO / folder).is_dir()
