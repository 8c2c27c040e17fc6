"""`gateway db upgrade`: apply the database migrations, and say from which revision to which."""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway.cli.config_file import config_argument, load_or_report
from gateway.store.connection_errors import (
    DB_CONNECT_TIMEOUT,
    database_errors,
    describe_connection_error,
    masked_url,
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    upgrade = db_commands.add_parser("upgrade", help="apply the database migrations")
    config_argument(upgrade)
    upgrade.set_defaults(run=run_upgrade)


def run_upgrade(args: argparse.Namespace) -> int:
    from gateway.store.engine import database_url

    config = load_or_report(args.config)
    if config is None:
        return 1
    url = database_url(config.base_dir)
    try:
        before, after = asyncio.run(_upgrade(url))
    except database_errors() as exc:
        print(
            f"gateway db upgrade: database {masked_url(url)}: {describe_connection_error(exc)}",
            file=sys.stderr,
        )
        return 1
    print(f"database {masked_url(url)}")
    if before == after:
        print(f"schema {after}: already at head, nothing to do")
    else:
        print(f"schema {before or 'none'} -> {after} (head)")
    return 0


async def _upgrade(url: str) -> tuple[str | None, str | None]:
    from gateway.store.engine import make_engine
    from gateway.store.migrate import current_revision, head_revision, upgrade

    engine = make_engine(url)
    try:
        # Reach the database first, with a deadline: the migration thread cannot be cancelled.
        before = await asyncio.wait_for(current_revision(engine), DB_CONNECT_TIMEOUT)
        if before != head_revision():
            await upgrade(url)
        return before, await current_revision(engine)
    finally:
        await engine.dispose()
