"""`gateway explain METHOD PATH`: replay the chain offline and say which stage decides, and why."""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway.cli.config_file import config_argument, load_or_report
from gateway.config.schema.top import Config
from gateway.security.keys import KeyConfigError
from gateway.store.connection_errors import database_errors, describe_connection_error


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    explain = commands.add_parser(
        "explain", help="replay the chain for METHOD PATH: which stage decides, and why"
    )
    explain.add_argument("method", help="e.g. GET")
    explain.add_argument("path", help="e.g. /admin/users")
    explain.add_argument("--token", help="the bearer token (default: none)")
    explain.add_argument("--client-ip", default="", help="for ip-keyed rate limits")
    config_argument(explain)
    explain.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
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
    from gateway.pipeline.explain import explain
    from gateway.runtime import Runtime
    from gateway.services import ServiceSettings, open_services

    settings = ServiceSettings.from_env(config)
    runtime = Runtime.build(config)
    await runtime.load_issuer_keys()  # the outside issuers' JWK Sets, as at start-up
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
