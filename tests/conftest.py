"""Shared fixtures: a routes.yaml written to a temp folder, the real gateway app
built from it, real aiohttp upstream servers on loopback, and real databases:
a migrated SQLite file always, PostgreSQL and Redis when the environment names
them (always in CI)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import textwrap
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.config import load_config
from gateway.middleware import Handler
from gateway.server.protocol import GatewayRunner
from gateway.services import ServiceSettings
from gateway.store.migrate import upgrade_sync

# A fixed test secret (32+ bytes): subprocess gateways inherit it too.
os.environ.setdefault("GATEWAY_JWT_SECRET", "test-secret-of-the-gateway-suite-0123456789")
os.environ.pop("GATEWAY_DATABASE_URL", None)
os.environ.pop("GATEWAY_REDIS_URL", None)

POSTGRES_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL")
IN_CI = os.environ.get("CI") == "true"
TABLES = ("refresh_tokens", "audit_logs", "report_logs", "users")

WriteConfig = Callable[..., Path]
MakeGateway = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
MakeUpstream = Callable[[web.Application], Awaitable[TestServer]]


def pytest_configure(config: pytest.Config) -> None:
    # At configure time, so that under xdist the controller says it (a worker's
    # UsageError showed only as an INTERNALERROR and "no tests ran").
    if IN_CI and not (POSTGRES_URL and REDIS_URL):
        raise pytest.UsageError(
            "CI=true but GATEWAY_TEST_POSTGRES_URL / GATEWAY_TEST_REDIS_URL are not set: "
            "run the suite through .ci/run"
        )


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Write routes.yaml (dedented) into tmp_path and return its path."""

    def write(text: str, name: str = "routes.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """The shipped role hierarchy (user ← analyst ← admin) in tmp_path/policies."""
    target = tmp_path / "policies"
    shutil.copytree(Path(__file__).resolve().parent.parent / "policies", target)
    return target


# --- databases -------------------------------------------------------------


def off_loop(function: Callable[..., Any], *args: Any) -> Any:
    """Run blocking set-up (which may start its own event loop) in a thread of its own."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args).result()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per worker; each test gets a copy."""
    path = tmp_path_factory.mktemp("db") / "template.db"
    off_loop(upgrade_sync, f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "gateway.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


def postgres_admin(url: str, sql: str) -> None:
    """Run one statement (CREATE/DROP DATABASE, TRUNCATE) on the server of `url`, off the loop."""
    import asyncpg
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def run() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    off_loop(asyncio.run, run())


@contextlib.contextmanager
def fresh_postgres(prefix: str) -> Iterator[str]:
    """The URL of a new, migrated PostgreSQL database named `prefix` plus a random
    suffix, dropped on exit; skips the test without GATEWAY_TEST_POSTGRES_URL."""
    if not POSTGRES_URL:
        pytest.skip("GATEWAY_TEST_POSTGRES_URL is not set (CI sets it): PostgreSQL variant skipped")
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:6]}"
    postgres_admin(POSTGRES_URL, f'CREATE DATABASE "{name}"')
    try:
        url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
        off_loop(upgrade_sync, url)
        yield url
    finally:
        postgres_admin(POSTGRES_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_database(worker_id: str) -> Iterator[str]:
    """A database of this xdist worker's own, migrated once, dropped at the end."""
    with fresh_postgres(f"gw_test_{worker_id}") as url:
        yield url


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """The worker's PostgreSQL database, emptied for this test."""
    postgres_admin(postgres_database, f"TRUNCATE {', '.join(TABLES)} CASCADE")
    return postgres_database


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each DB-touching test runs on SQLite, and on PostgreSQL when it is configured."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def redis_url() -> str:
    if not REDIS_URL:
        pytest.skip("GATEWAY_TEST_REDIS_URL is not set (CI sets it): Redis variant skipped")
    return REDIS_URL


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own, so parallel tests share one Redis safely."""
    return f"gwtest:{uuid.uuid4().hex[:10]}:"


# --- servers ---------------------------------------------------------------


def echo_app() -> web.Application:
    """An upstream that answers every request with its path and headers."""

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path, "headers": dict(request.headers)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def echo(upstream: MakeUpstream) -> TestServer:
    return await upstream(echo_app())


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> MakeUpstream:
    """Start a real aiohttp server on loopback from an Application."""

    async def start(app: web.Application) -> TestServer:
        return await aiohttp_server(app)

    return start


class GatewayTestServer(TestServer):
    """The app on the gateway's own server, as `gateway serve` runs it: GatewayRunner's
    connections (problems for malformed HTTP, the lean path for upstream routes)."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        kwargs.setdefault("access_log", None)  # as gateway serve: the audit log is the record
        return GatewayRunner(self.app, **kwargs)


@pytest.fixture
async def gateway(
    write_config: WriteConfig,
    sqlite_url: str,
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
) -> MakeGateway:
    """Build the real gateway app from routes.yaml text and return a client for it.

    The database is this test's migrated SQLite copy unless `database_url` is
    given; Redis is used when `redis_url` is given.
    """

    async def make(
        text: str,
        handlers: Mapping[str, Handler] | None = None,
        *,
        database_url: str | None = None,
        redis_url: str | None = None,
        redis_prefix: str = "gateway:",
    ) -> TestClient[web.Request, web.Application]:
        path = write_config(text)
        config = load_config(path, extra_handlers=set(handlers or ()))
        settings = ServiceSettings(
            database_url=database_url or sqlite_url,
            redis_url=redis_url,
            redis_prefix=redis_prefix,
        )
        app = build_app(config, handlers=handlers, settings=settings)
        return await aiohttp_client(GatewayTestServer(app))

    return make


@pytest.fixture
async def root(client: TestClient[web.Request, web.Application]) -> dict[str, str]:
    """An admin's bearer headers, on the test module's own `client` gateway."""
    from tests.identity import bearer, login, make_user

    await make_user(client, "root", "admin")
    return bearer(await login(client, "root"))
