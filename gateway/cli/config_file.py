"""The --config option every command takes, and loading that file with its problems on stderr."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.config import ConfigError, load_config
from gateway.config.schema.top import Config


def config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("routes.yaml"),
        help="routes.yaml to use (default: ./routes.yaml); relative paths in it are "
        "relative to its folder",
    )


def load_or_report(path: Path) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None
