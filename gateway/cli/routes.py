"""`gateway routes`: the resolved route table; with --diff, what changing a config would change
(routes, upstreams, roles, policy files and every other setting; see gateway/config/diff.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.cli.config_file import config_argument, load_or_report
from gateway.config.units import format_duration


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    routes = commands.add_parser("routes", help="print the resolved route table")
    config_argument(routes)
    routes.add_argument(
        "--diff",
        nargs=2,
        metavar=("OLD", "NEW"),
        type=Path,
        help="what changing OLD into NEW would change (exit 0 same, 1 different, 2 invalid)",
    )
    routes.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return _diff(*args.diff) if args.diff else _table(args.config)


def _table(path: Path) -> int:
    config = load_or_report(path)
    if config is None:
        return 1
    rows = [("#", "METHODS", "PATH", "TARGET", "STRIP", "AUTH", "ROLES", "RATE LIMIT", "FROM")]
    for route in config.routes:
        methods = ",".join(sorted(route.methods)) if route.methods else "*"
        limit = route.rate_limit
        rows.append(
            (
                str(route.index + 1),
                methods,
                route.path,
                route.target,
                route.strip_prefix or "-",
                route.auth,
                ",".join(route.roles) or ("-" if route.auth == "none" else "any"),
                f"{limit.rate} by {limit.key}" if limit else "-",
                route.source.rsplit("/", 1)[-1],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    if config.upstreams:
        print()
        for upstream in config.upstreams.values():
            targets = ", ".join(t.url for t in upstream.targets)
            timeout = format_duration(upstream.timeout)
            connect = format_duration(upstream.connect_timeout)
            print(f"upstream {upstream.name}: {targets} (timeout {timeout}, connect {connect})")
    return 0


def _diff(old_path: Path, new_path: Path) -> int:
    from gateway.config.diff import diff

    old, new = load_or_report(old_path), load_or_report(new_path)
    if old is None or new is None:
        return 2
    lines = diff(old, new)
    for line in lines:
        print(line)
    if not lines:
        print("no differences")
    return 1 if lines else 0
