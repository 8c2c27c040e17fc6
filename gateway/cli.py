"""The `gateway` command: serve, check, routes, db upgrade, users create (see the README)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import ConfigError, load_config
from gateway.config.schema import Config
from gateway.config.units import format_duration
from gateway.connection_errors import (
    DB_CONNECT_TIMEOUT,
    database_errors,
    describe_connection_error,
    masked_url,
)
from gateway.security.keys import KeyConfigError

if TYPE_CHECKING:  # the db and users commands import their machinery when run: check stays quick
    from gateway.services import ServiceSettings
    from gateway.state.identity import UserState


def config_argument(parser: argparse.ArgumentParser) -> None:
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
    config_argument(serve)
    serve.add_argument("--host", help="listen address (default: server.listen)")
    serve.add_argument("--port", type=int, help="listen port (default: server.listen)")
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="processes sharing the port (SO_REUSEPORT); more than 1 needs GATEWAY_REDIS_URL",
    )
    serve.add_argument("--worker-of", type=int, help=argparse.SUPPRESS)  # set by --workers' parent

    check = commands.add_parser("check", help="validate routes.yaml and policies/")
    config_argument(check)

    routes = commands.add_parser("routes", help="print the resolved route table")
    config_argument(routes)
    routes.add_argument(
        "--diff",
        nargs=2,
        metavar=("OLD", "NEW"),
        type=Path,
        help="what changing OLD into NEW would change (exit 0 same, 1 different, 2 invalid)",
    )

    certs = commands.add_parser("certs", help="TLS certificates for development")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")
    dev = certs_commands.add_parser(
        "dev", help="make a local CA (reused if present) and a server certificate for localhost"
    )
    dev.add_argument(
        "--dir", type=Path, default=Path("certs"), help="output folder (default: certs beside it)"
    )
    dev.add_argument(
        "--force", action="store_true", help="make a new CA even if one exists (trust it again)"
    )
    config_argument(dev)

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    upgrade = db_commands.add_parser("upgrade", help="apply the database migrations")
    config_argument(upgrade)

    users = commands.add_parser("users", help="manage users")
    user_commands = users.add_subparsers(dest="users_command", required=True, metavar="COMMAND")
    create = user_commands.add_parser(
        "create", help="create a user; the password is read from stdin (prompted on a terminal)"
    )
    create.add_argument("username", help="3-64 characters: letters, digits, '.', '_', '-'")
    create.add_argument("--role", required=True, help="a role defined in policies/")
    config_argument(create)

    models = commands.add_parser("models", help="the AI team's models: add one, list them")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    add = model_commands.add_parser(
        "add", help="register a model in routes.yaml (comments kept) once the result validates"
    )
    add.add_argument("name", help="the model's name: upstream NAME, route /models/NAME/**")
    add.add_argument("url", help="where the model listens: http(s)://host:port[/base-path]")
    add.add_argument("--roles", help="comma-separated roles that may call it (default: any user)")
    add.add_argument(
        "--rate-limit", help="per user, e.g. 30/min; off for none (default: 60/min per user)"
    )
    add.add_argument("--timeout", help="whole-response timeout, e.g. 2m (default: 5m)")
    add.add_argument("--usage", help="token usage format of its responses: openai")
    add.add_argument("--token-limit", help="tokens per user, e.g. 100000/day (needs --usage)")
    add.add_argument("--fallback", help="comma-separated models to try when it fails")
    config_argument(add)
    listing = model_commands.add_parser("list", help="each model, its settings and its health")
    config_argument(listing)

    explain = commands.add_parser(
        "explain", help="replay the chain for METHOD PATH: which stage decides, and why"
    )
    explain.add_argument("method", help="e.g. GET")
    explain.add_argument("path", help="e.g. /admin/users")
    explain.add_argument("--token", help="the bearer token (default: none)")
    explain.add_argument("--client-ip", default="", help="for ip-keyed rate limits")
    config_argument(explain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check":
        return _check(args.config)
    if args.command == "routes":
        return _routes_diff(*args.diff) if args.diff else _routes(args.config)
    if args.command == "certs":
        return _certs_dev(args.config, args.dir, args.force)
    if args.command == "db":
        return _db_upgrade(args.config)
    if args.command == "users":
        return _users_create(args.config, args.username, args.role)
    if args.command == "models":
        return _models(args)
    if args.command == "explain":
        return _explain(args)
    raise AssertionError(args.command)  # argparse only admits the commands above


def load_or_report(path: Path) -> Config | None:
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
    config = load_or_report(args.config)
    if config is None:
        return 1
    if args.workers > 1:
        from gateway.workers import serve_workers

        return serve_workers(config, args.workers, args.host, args.port, args.log_level)
    return run(args.config, args.host, args.port, worker_of=args.worker_of)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _certs_dev(config: Path, directory: Path, force: bool) -> int:
    from gateway.certs import CertificateError, dev_certs, trust_instructions

    base = config.resolve().parent  # like every relative path of routes.yaml
    folder = directory if directory.is_absolute() else base / directory
    try:
        made = dev_certs(folder, force=force)
    except CertificateError as exc:
        print(f"gateway certs dev: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gateway certs dev: {folder}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"CA certificate:     {made.ca_cert} ({'kept' if made.ca_reused else 'new'})")
    print(f"CA key:             {made.ca_key} (mode 0600)")
    print(f"server certificate: {made.server_cert} (localhost, 127.0.0.1, ::1)")
    print(f"server key:         {made.server_key} (mode 0600)")
    cert, key = (os.path.relpath(p, base) for p in (made.server_cert, made.server_key))
    print(f"In {config}: server: {{tls: {{cert: {cert}, key: {key}}}}}")
    print()
    print(trust_instructions(made))
    return 0


def _check(path: Path) -> int:
    config = load_or_report(path)
    if config is None:
        return 1
    print(
        f"{config.path}: ok ({len(config.routes)} routes, {len(config.upstreams)} upstreams, "
        f"{len(config.models)} models)"
    )
    return 0


def _routes(path: Path) -> int:
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


def _routes_diff(old_path: Path, new_path: Path) -> int:
    from gateway.config.diff import diff

    old, new = load_or_report(old_path), load_or_report(new_path)
    if old is None or new is None:
        return 2
    lines = diff(old, new)
    for line in lines:
        print(line)
    if not lines:
        print("no differences in routes, upstreams or roles")
    return 1 if lines else 0


def _models(args: argparse.Namespace) -> int:
    from gateway.models_cli import add_model, list_models  # ruamel.yaml only when needed

    if args.models_command == "add":
        return add_model(
            args.config,
            args.name,
            args.url,
            args.roles,
            args.rate_limit,
            args.timeout,
            usage=args.usage,
            token_limit=args.token_limit,
            fallback=args.fallback,
        )
    return list_models(args.config)


# --- explain ---------------------------------------------------------------


def _explain(args: argparse.Namespace) -> int:
    """0: allowed, 1: denied, 2: the config or the database could not be read."""
    config = load_or_report(args.config)
    if config is None:
        return 2
    errors: tuple[type[BaseException], ...] = (KeyConfigError, *database_errors())
    try:
        return asyncio.run(_explain_with(config, args))
    except errors as exc:
        print(f"gateway explain: {describe_connection_error(exc)}", file=sys.stderr)
        return 2


async def _explain_with(config: Config, args: argparse.Namespace) -> int:
    from gateway.explain import explain
    from gateway.runtime import Runtime
    from gateway.services import ServiceSettings, open_services

    settings = ServiceSettings.from_env(config)
    runtime = Runtime.build(config)
    services = await open_services(config, settings)
    try:
        result = await explain(
            runtime,
            args.method,
            args.path,
            args.token,
            services.identity,
            services.limiter if settings.redis_url else None,
            args.client_ip,
        )
    finally:
        await services.close()
        await runtime.close()
    for line in result.lines():
        print(line)
    if not settings.redis_url:
        print(
            "note: without GATEWAY_REDIS_URL, logouts and rate-limit counts live in the "
            "running gateway only: ask it with POST /admin/explain",
            file=sys.stderr,
        )
    return 0 if result.allowed else 1


# --- db upgrade, users create ------------------------------------------------

USERNAME_RULE = "3 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def _db_upgrade(path: Path) -> int:
    from gateway.store.engine import database_url

    config = load_or_report(path)
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


def _users_create(path: Path, username: str, role: str) -> int:
    from gateway.handlers.auth import USERNAME
    from gateway.problems import GatewayError
    from gateway.services import ServiceSettings, StartupError, password_service

    config = load_or_report(path)
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
