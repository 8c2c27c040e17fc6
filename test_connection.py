"""Check what the gateway needs to reach: its database, Redis (when set), every upstream target.

Run from the project root: `python test_connection.py [--config routes.yaml]`.
Prints one line per check, `ok` or `FAIL`, with its latency (Redis unset is
a line too, `redis  not configured: in-process state`), and exits 0
when every check passed, 1 otherwise. It changes nothing: a SQLite file that
does not exist yet is not created (the gateway creates it at start), and URLs
are printed with their passwords masked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.engine import make_url

from gateway.cli.config_file import config_argument, load_or_report
from gateway.config import Config
from gateway.config.schema.upstreams import UpstreamTarget
from gateway.services import ServiceSettings
from gateway.store.connection_errors import database_errors, describe_connection_error, masked_url
from gateway.store.engine import is_sqlite, make_engine
from gateway.store.migrate import current_revision, head_revision

DATABASE_TIMEOUT = 5.0  # seconds to connect and answer SELECT 1
REDIS_TIMEOUT = 2.0  # as the gateway's own Redis client
NO_REDIS = "not configured: in-process state"  # GATEWAY_REDIS_URL unset


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    kind: str  # database, redis, upstream or model
    subject: str  # what was reached: a masked URL, or "NAME URL"
    ms: float | None  # None: nothing to reach (Redis not configured)
    detail: str = ""

    def line(self) -> str:
        status = "ok" if self.ok else "FAIL"
        took = "" if self.ms is None else f"  {self.ms:.1f} ms"
        return f"{status:<4} {self.kind:<8}  {self.subject}{took} {self.detail}".rstrip()


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def check_database(url: str, seconds: float = DATABASE_TIMEOUT) -> Check:
    """SELECT 1, then the schema revision against the migrations' head."""
    subject = masked_url(url)
    started = time.perf_counter()
    try:
        sqlite = is_sqlite(url)
        absent = _absent_file_check(subject, make_url(url).database) if sqlite else None
    except database_errors() as exc:
        return Check(False, "database", subject, _since(started), describe_connection_error(exc))
    if absent:
        return absent
    engine = None
    try:
        engine = make_engine(url)
        async with asyncio.timeout(seconds):
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            elapsed = _since(started)
            current = await current_revision(engine)
    except database_errors() as exc:
        return Check(False, "database", subject, _since(started), describe_connection_error(exc))
    finally:
        if engine is not None:
            await engine.dispose()
    head = head_revision()
    if current == head:
        return Check(True, "database", subject, elapsed, f"(schema {current}, head)")
    behind = f"schema {current or 'none'}, head {head}"
    if sqlite:  # the gateway migrates a SQLite file in place at start (services.ensure_schema)
        return Check(True, "database", subject, elapsed, f"({behind}: migrated at start)")
    return Check(False, "database", subject, elapsed, f"{behind}: run `gateway db upgrade`")


def _absent_file_check(subject: str, path: str | None) -> Check | None:
    """A verdict without connecting, when the SQLite file does not exist (connecting makes it)."""
    if not path or path == ":memory:" or Path(path).exists():
        return None
    folder = Path(path).parent
    if not folder.is_dir():
        return Check(False, "database", subject, 0.0, f"no such folder: {folder}")
    if not os.access(folder, os.W_OK):
        return Check(False, "database", subject, 0.0, f"no file, and {folder} is not writable")
    return Check(True, "database", subject, 0.0, "(no file yet: the gateway creates it at start)")


async def check_redis(url: str, seconds: float = REDIS_TIMEOUT) -> Check:
    subject = masked_url(url)
    started = time.perf_counter()
    try:
        redis = Redis.from_url(url, socket_timeout=seconds, socket_connect_timeout=seconds)
    except ValueError as exc:  # a scheme redis-py does not know
        return Check(False, "redis", subject, _since(started), str(exc))
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        return Check(False, "redis", subject, _since(started), describe_connection_error(exc))
    finally:
        await redis.aclose()
    return Check(True, "redis", subject, _since(started), "(PING)")


async def _no_redis() -> Check:
    # Not a failure: one instance keeps rate limits, revocations and the like in memory.
    return Check(True, "redis", NO_REDIS, None)


async def check_target(kind: str, name: str, target: UpstreamTarget, seconds: float) -> Check:
    """A TCP connection to the target, within the upstream's connect_timeout."""
    subject = f"{name} {target.url}"
    started = time.perf_counter()
    try:
        async with asyncio.timeout(seconds):
            _, writer = await asyncio.open_connection(target.host, target.port)
    except OSError as exc:  # TimeoutError included
        return Check(False, kind, subject, _since(started), describe_connection_error(exc))
    elapsed = _since(started)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Check(True, kind, subject, elapsed)


async def run_checks(config: Config, settings: ServiceSettings) -> list[Check]:
    """Every check at once; results in a stable order (database, redis, upstreams)."""
    checks = [check_database(settings.database_url)]
    if settings.redis_url:
        checks.append(check_redis(settings.redis_url))
    else:
        checks.append(_no_redis())
    for upstream in config.upstreams.values():
        kind = "model" if upstream.name in config.models else "upstream"
        checks.extend(
            check_target(kind, upstream.name, target, upstream.connect_timeout)
            for target in upstream.targets
        )
    return list(await asyncio.gather(*checks))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    config_argument(parser)
    args = parser.parse_args(argv)
    config = load_or_report(args.config)
    if config is None:
        return 1
    results = asyncio.run(run_checks(config, ServiceSettings.from_env(config)))
    for result in results:
        print(result.line())
    return 0 if all(result.ok for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
