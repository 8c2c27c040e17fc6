"""`gateway check`: validate routes.yaml and policies/, and count what they define."""

from __future__ import annotations

import argparse

from gateway.cli.config_file import config_argument, load_or_report


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = commands.add_parser("check", help="validate routes.yaml and policies/")
    config_argument(check)
    check.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_or_report(args.config)
    if config is None:
        return 1
    print(
        f"{config.path}: ok ({len(config.routes)} routes, {len(config.upstreams)} upstreams, "
        f"{len(config.models)} models)"
    )
    return 0
