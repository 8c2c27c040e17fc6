"""`gateway check`: validate routes.yaml and policies/, build what `gateway serve` builds
from them, and count what they define.

Loading validates every key (FILE:LINE for each problem); then the same builder
that serve and a reload run (`Runtime.build`: signing keys, token verifier,
route table, role sets, outside issuers, usage readers, upstream pools with
their TLS contexts) runs too, and the database and Redis URLs are parsed and
their drivers loaded, so a config that passes here does not fail at start or
at a reload for a config reason. No socket is bound, nothing is fetched, no
database is opened.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from gateway.cli.config_file import config_argument, load_or_report
from gateway.config.schema.top import Config
from gateway.config.yamlsource import ConfigProblem
from gateway.security.keys import MIN_SECRET_BYTES, SECRET_ENV


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = commands.add_parser("check", help="validate routes.yaml and policies/")
    config_argument(check)
    check.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_or_report(args.config)
    if config is None:
        return 1
    if _secret_unset(config):
        print(
            f"{config.path}: note: {SECRET_ENV} is not set here; serve needs it "
            "(auth.algorithm is HS256 and auth.keys is empty)",
            file=sys.stderr,
        )
    problems = build_problems(config)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(
        f"{config.path}: ok ({len(config.routes)} routes, {len(config.upstreams)} upstreams, "
        f"{len(config.models)} models)"
    )
    return 0


def build_problems(config: Config) -> list[ConfigProblem]:
    """What stops `config` from being built as serve and a reload build it (empty: nothing).

    The signing secret from the environment is the deployment's, not the config's:
    when it is not set here, a stand-in lets the rest be built (`run` notes it).
    """
    if not _secret_unset(config):
        return asyncio.run(_build(config))
    os.environ[SECRET_ENV] = "x" * MIN_SECRET_BYTES
    try:
        return asyncio.run(_build(config))
    finally:
        del os.environ[SECRET_ENV]


def _secret_unset(config: Config) -> bool:
    return (
        config.auth.algorithm == "HS256" and not config.auth.keys and not os.environ.get(SECRET_ENV)
    )


async def _build(config: Config) -> list[ConfigProblem]:
    from redis.asyncio import Redis

    from gateway.reload import build_problem
    from gateway.runtime import Runtime
    from gateway.services import ENV_REDIS_URL, ServiceSettings
    from gateway.store.engine import ENV_DATABASE_URL, make_engine

    problems: list[ConfigProblem] = []
    try:
        runtime = Runtime.build(config)  # the pools open no connection until a request
    except Exception as exc:
        problems.append(build_problem(config.path, exc))
    else:
        await runtime.close()
    settings = ServiceSettings.from_env(config)
    try:
        engine = make_engine(settings.database_url, config.database.timeout)  # not connected
    except Exception as exc:
        # the type only: a parser's message may quote the URL, password and all
        problems.append(
            ConfigProblem(str(config.path), 0, f"{ENV_DATABASE_URL}: cannot be used ({_why(exc)})")
        )
    else:
        await engine.dispose()
    if settings.redis_url is not None:
        try:
            redis = Redis.from_url(settings.redis_url)  # parsed; connects at the first call
        except Exception as exc:
            problems.append(
                ConfigProblem(str(config.path), 0, f"{ENV_REDIS_URL}: cannot be used ({_why(exc)})")
            )
        else:
            await redis.aclose()
    return problems


def _why(exc: Exception) -> str:
    """Why a URL cannot be used, in words that never quote the URL (it may hold a password)."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    if isinstance(exc, NoSuchModuleError):  # "Can't load plugin: sqlalchemy.dialects:x"
        return f"no such database driver: {str(exc).rsplit(':', 1)[-1]}"
    if isinstance(exc, ModuleNotFoundError):
        return f"its driver {exc.name} is not installed; e.g. postgresql+asyncpg://…"
    if isinstance(exc, ArgumentError):
        return "not a database URL; e.g. postgresql+asyncpg://user@host/db"
    if isinstance(exc, ValueError) and "scheme" in str(exc):  # redis-py names the schemes
        return str(exc)
    return type(exc).__name__
