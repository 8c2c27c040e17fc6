"""`gateway users create`: a user in the database, shared with running gateways through Redis."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import re
import sys
from typing import TYPE_CHECKING

from gateway.cli.config_file import config_argument, load_or_report
from gateway.store.connection_errors import (
    DB_CONNECT_TIMEOUT,
    database_errors,
    describe_connection_error,
    masked_url,
)

if TYPE_CHECKING:  # imported when the command runs: `gateway check` stays quick
    from gateway.services import ServiceSettings
    from gateway.state.identity import UserState

USERNAME_RULE = "3 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    users = commands.add_parser("users", help="manage users")
    user_commands = users.add_subparsers(dest="users_command", required=True, metavar="COMMAND")
    create = user_commands.add_parser(
        "create", help="create a user; the password is read from stdin (prompted on a terminal)"
    )
    create.add_argument("username", help="3-64 characters: letters, digits, '.', '_', '-'")
    create.add_argument("--role", required=True, help="a role defined in policies/")
    config_argument(create)
    create.set_defaults(run=run_create)


def run_create(args: argparse.Namespace) -> int:
    from gateway.handlers.auth import USERNAME
    from gateway.problems import GatewayError
    from gateway.services import ServiceSettings, StartupError, password_service

    username: str = args.username
    role: str = args.role
    config = load_or_report(args.config)
    if config is None:
        return 1
    if not (3 <= len(username) <= 64 and re.fullmatch(USERNAME, username)):
        print(f"invalid username {username!r}: {USERNAME_RULE}", file=sys.stderr)
        return 1
    if role not in config.policy.roles:
        known = ", ".join(sorted(config.policy.roles)) or "none"
        print(f"unknown role {role!r}: the policies define {known}", file=sys.stderr)
        return 1
    password = _read_password()
    if password is None:
        return 1
    passwords = password_service(config.auth)
    try:
        passwords.check_policy(password, username)
    except GatewayError as exc:
        print(f"weak password: {exc.detail}", file=sys.stderr)
        return 1
    settings = ServiceSettings.from_env(config)
    try:
        return asyncio.run(_create_user(settings, username, passwords.hash(password), role))
    except StartupError as exc:
        print(str(exc), file=sys.stderr)
    except database_errors() as exc:
        print(
            f"gateway users create: database {masked_url(settings.database_url)}: "
            f"{describe_connection_error(exc)}",
            file=sys.stderr,
        )
    return 1


def _read_password() -> str | None:
    """One line of stdin (its newline stripped); on a terminal, prompt twice."""
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Repeat the password: ") != first:
            print("the passwords do not match", file=sys.stderr)
            return None
        return first
    line = sys.stdin.readline()
    if not line:
        print("no password given: write it as one line on stdin", file=sys.stderr)
        return None
    return line.removesuffix("\n").removesuffix("\r")


async def _create_user(
    settings: ServiceSettings, username: str, password_hash: str, role: str
) -> int:
    from gateway.problems import GatewayError
    from gateway.services import ensure_schema
    from gateway.store.engine import make_engine, make_sessions
    from gateway.store.users import UserStore

    engine = make_engine(settings.database_url)
    try:
        await asyncio.wait_for(ensure_schema(engine, settings.database_url), DB_CONNECT_TIMEOUT)
        try:
            user = await UserStore(make_sessions(engine)).create(username, password_hash, role)
        except GatewayError as exc:
            if exc.code != "username_taken":
                raise
            print(f"username {username!r} is taken", file=sys.stderr)
            return 1
    finally:
        await engine.dispose()
    print(f"created user {user.username!r}: id {user.id}, role {user.role}")
    if settings.redis_url:
        from gateway.state.identity import UserState

        state = UserState.of(user)
        await _share_user(settings.redis_url, settings.redis_prefix, user.id, state)
    return 0


async def _share_user(redis_url: str, prefix: str, user_id: str, state: UserState) -> None:
    """Write the user's state where running gateways look first (as RedisIdentity does)."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    from gateway.state.identity import RedisIdentity

    try:
        redis = Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        try:
            await redis.ping()  # set_user only logs a failure; this one should be said
            await RedisIdentity(redis, prefix).set_user(user_id, state)
        finally:
            await redis.aclose()
    # ValueError: a URL scheme redis-py does not know
    except (RedisError, OSError, ValueError) as exc:
        print(
            f"warning: redis {masked_url(redis_url)}: {describe_connection_error(exc)}; "
            "running gateways read the new user from the database instead",
            file=sys.stderr,
        )
    else:
        print(f"shared with running gateways through redis {masked_url(redis_url)}")
