"""The `gateway` command: serve, check, routes (contract section 1)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.config import ConfigError, load_config
from gateway.config.schema import Config
from gateway.config.units import format_duration


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("routes.yaml"),
        help="routes.yaml to use (default: ./routes.yaml); relative paths in it are "
        "relative to its folder",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway in the foreground")
    _config_arg(serve)
    serve.add_argument("--host", help="listen address (default: server.listen)")
    serve.add_argument("--port", type=int, help="listen port (default: server.listen)")
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")

    check = commands.add_parser("check", help="validate routes.yaml and policies/")
    _config_arg(check)

    routes = commands.add_parser("routes", help="print the resolved route table")
    _config_arg(routes)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check":
        return _check(args.config)
    if args.command == "routes":
        return _routes(args.config)
    raise AssertionError(args.command)  # argparse only admits the commands above


def _load_or_report(path: Path) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    from gateway.logs import setup_logging
    from gateway.server import run

    setup_logging(args.log_level.upper())
    if _load_or_report(args.config) is None:
        return 1
    return run(args.config, args.host, args.port)


def _check(path: Path) -> int:
    config = _load_or_report(path)
    if config is None:
        return 1
    print(
        f"{config.path}: ok ({len(config.routes)} routes, {len(config.upstreams)} upstreams, "
        f"{len(config.models)} models)"
    )
    return 0


def _routes(path: Path) -> int:
    config = _load_or_report(path)
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
