"""Generated blocks of README.md: the text between a start and an end marker, and the
`--write FILE` command that replaces it (gateway/config/reference.py, gateway/problem_types.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def spliced(document: str, text: str, start_marker: str, end_marker: str) -> str:
    """`document` with the text between its markers replaced by `text`."""
    start, end = _span(document, start_marker, end_marker)
    return document[: start + len(start_marker)] + "\n" + text + document[end:]


def between(document: str, start_marker: str, end_marker: str) -> str:
    """The text between `document`'s markers, without the line break after the start one."""
    start, end = _span(document, start_marker, end_marker)
    return document[start + len(start_marker) : end].removeprefix("\n")


def _span(document: str, start_marker: str, end_marker: str) -> tuple[int, int]:
    start, end = document.find(start_marker), document.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"the markers {start_marker} and {end_marker} are missing or out of order")
    return start, end


def write_main(
    argv: Sequence[str] | None,
    prog: str,
    description: str,
    render: Callable[[], str],
    markers: tuple[str, str],
) -> int:
    """Print `render()`, or with `--write FILE` put it between FILE's markers."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--write", metavar="FILE", type=Path, help="e.g. README.md")
    args = parser.parse_args(argv)
    text = render()
    if args.write is None:
        sys.stdout.write(text)
        return 0
    try:
        document = args.write.read_text(encoding="utf-8")
        args.write.write_text(spliced(document, text, *markers), encoding="utf-8")
    except (OSError, ValueError) as exc:
        print(f"{args.write}: {exc}", file=sys.stderr)
        return 1
    return 0
