"""The `gateway` command: serve, check, routes, db upgrade, users create (see the README)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from gateway import __version__
from gateway.cli import certs, check, db, explain, models, routes, serve, users


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (serve, check, routes, certs, db, users, models, explain):
        command.register(commands)  # in this order in `gateway --help`
    return parser


def version_line() -> str:
    """`gateway --version`: the gateway's version and what it runs on."""
    import platform

    import aiohttp

    return (
        f"gateway {__version__} (Python {platform.python_version()}, aiohttp {aiohttp.__version__})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run  # each command's register sets it
    return run(args)
