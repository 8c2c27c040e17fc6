"""The database failing is a 503 `database_down` within database.timeout, never a 500 or a hang.

A real `gateway serve` reaches PostgreSQL through `tests/tcpproxy.py`, which
then refuses, resets or hangs (SIGSTOP) every connection. Each local endpoint
that needs the database must answer 503 within a bound, a proxied route with
an already-known user must keep answering 200, /readyz must say 503, the
audit must go to the spool; once the proxy forwards again the same calls
succeed without a restart, and the spooled rows reach the database. The
shared PostgreSQL server itself is never touched. A SQLite file locked by
another connection shows the same answer in process.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from argon2 import PasswordHasher
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.engine import make_url

from gateway.store.engine import make_engine, make_sessions
from gateway.store.guard import unreachable
from gateway.store.users import UserStore
from models import AuditLog
from tests.conftest import MakeGateway, fresh_postgres, off_loop
from tests.identity import CHEAP_HASHING, PASSWORD, identity_config
from tests.processes import free_port, start_gateway, stop, users_create
from tests.tcpproxy import ProxyProcess

TIMEOUT = 1.0  # database.timeout of these gateways, seconds
BOUND = 3 * TIMEOUT + 1.0  # an answer later than this is a hang
MODES = ("refuse", "reset", "hang")
USERS = (("root", "admin"), ("alice", "user"))


@pytest.fixture(scope="module")
def direct_url() -> Iterator[str]:
    """A migrated PostgreSQL database of this module's own (the gateways reach it by proxy)."""
    with fresh_postgres("gw_dbdown") as url:
        # root and alice of each mode exist before any gateway starts, so it holds their state
        known = [(f"{name}-{mode}", role) for mode in MODES for name, role in USERS]
        off_loop(asyncio.run, create_users(url, *known))
        yield url


@pytest.fixture
def proxy(direct_url: str) -> Iterator[ProxyProcess]:
    target = make_url(direct_url)
    running = ProxyProcess(target.host or "127.0.0.1", target.port or 5432)
    yield running
    running.close()


def through(proxy: ProxyProcess, direct_url: str) -> str:
    return make_url(direct_url).set(port=proxy.port).render_as_string(hide_password=False)


async def create_users(url: str, *names: tuple[str, str]) -> None:
    """Users straight into the database, as `gateway users create` puts them."""
    engine = make_engine(url)
    try:
        users = UserStore(make_sessions(engine))
        password_hash = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash(PASSWORD)
        for username, role in names:
            await users.create(username, password_hash, role)
    finally:
        await engine.dispose()


async def audited_ids(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            return set((await connection.execute(select(AuditLog.request_id))).scalars())
    finally:
        await engine.dispose()


class Gateway:
    """A `gateway serve` process and a client session for it."""

    def __init__(self, base: str, http: aiohttp.ClientSession) -> None:
        self.base = base
        self.http = http

    async def call(
        self, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> tuple[int, dict[str, Any], float]:
        """(status, JSON body or {}, seconds taken) of one request."""
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        started = time.monotonic()
        async with self.http.request(method, self.base + path, headers=headers, **kwargs) as resp:
            body = await resp.read()
            taken = time.monotonic() - started
            if resp.content_type in ("application/json", "application/problem+json") and body:
                return resp.status, await resp.json(content_type=None), taken
            return resp.status, {}, taken

    async def login(self, username: str) -> dict[str, Any]:
        status, body, _ = await self.call(
            "POST", "/auth/login", json={"username": username, "password": PASSWORD}
        )
        assert status == 200, body
        return body


@pytest.fixture
async def served(
    proxy: ProxyProcess,
    direct_url: str,
    tmp_path: Path,
    policies: Path,
    echo: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Gateway]:
    port = free_port()
    config = tmp_path / "routes.yaml"
    config.write_text(
        f"server:\n  listen: 127.0.0.1:{port}\n"
        f"database:\n  timeout: {TIMEOUT}s\n" + identity_config(upstream_port=echo.port)
    )
    monkeypatch.setenv("GATEWAY_DATABASE_URL", through(proxy, direct_url))
    process = start_gateway(config, port, tmp_path / "gateway.log")
    try:
        timeout = aiohttp.ClientTimeout(total=4 * BOUND)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            yield Gateway(f"http://127.0.0.1:{port}", http)
    finally:
        stop(process)
    log = (tmp_path / "gateway.log").read_text()
    assert "Traceback" not in log  # nothing reached the catch-all 500
    assert "internal_error" not in log


def assert_database_down(answer: tuple[int, dict[str, Any], float], what: str) -> None:
    status, body, taken = answer
    assert status == 503, (what, status, body)
    assert body["code"] == "database_down", (what, body)
    assert body["detail"] == "the database is unreachable; try again shortly", (what, body)
    assert taken < BOUND, (what, taken)


def break_proxy(proxy: ProxyProcess, mode: str) -> None:
    if mode == "hang":
        proxy.hang()
    else:
        proxy.switch(mode)


def mend_proxy(proxy: ProxyProcess, mode: str) -> None:
    if mode == "hang":
        proxy.resume()
    else:
        proxy.switch("forward")


async def wait_until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"not within {seconds}s: {what}"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("mode", MODES)
async def test_every_database_endpoint_answers_503_while_postgres_is_down_then_recovers(
    mode: str, served: Gateway, proxy: ProxyProcess, direct_url: str, tmp_path: Path
) -> None:
    gw = served
    root, alice, late = f"root-{mode}", f"alice-{mode}", f"late-{mode}"
    # root and alice existed before the gateway started, so it holds their state;
    # "late" is made behind its back: its first proxied request must read it.
    await create_users(direct_url, (late, "user"))
    root_pair = await gw.login(root)
    alice_pair = await gw.login(alice)
    alice_other = await gw.login(alice)  # a second session, for logging out
    late_token = (await gw.login(late))["access_token"]
    status, _, _ = await gw.call("GET", "/open/x", alice_pair["access_token"])
    assert status == 200

    break_proxy(proxy, mode)
    try:
        outage_ids = [f"down-{mode}-{n}" for n in range(8)]
        calls = {
            "login": gw.call("POST", "/auth/login", json={"username": alice, "password": PASSWORD}),
            "refresh": gw.call(
                "POST", "/auth/refresh", json={"refresh_token": alice_pair["refresh_token"]}
            ),
            "logout": gw.call("POST", "/auth/logout", alice_other["access_token"]),
            "register": gw.call(
                "POST", "/auth/register", json={"username": f"new-{mode}", "password": PASSWORD}
            ),
            "users/me": gw.call("GET", "/users/me", root_pair["access_token"]),
            "admin/users": gw.call("GET", "/admin/users", root_pair["access_token"]),
            "uncached user": gw.call("GET", "/open/x", late_token),
            "readyz": gw.call("GET", "/readyz"),
        }
        answers = dict(zip(calls, await asyncio.gather(*calls.values()), strict=True))
        for what, answer in answers.items():
            if what == "readyz":
                assert answer[0] == 503, answer
                assert answer[1]["code"] == "database_down", answer
                assert answer[2] < BOUND, answer
            else:
                assert_database_down(answer, what)
        # a user the gateway knows needs no database: proxied routes keep working
        for request_id in outage_ids:
            status, body, taken = await gw.call(
                "GET",
                "/open/x",
                alice_pair["access_token"],
                headers={"X-Request-Id": request_id},
            )
            assert status == 200, body
            assert taken < BOUND
        # ... and their audit rows go to the spool while the database is away
        spool = tmp_path / "audit.spool"

        async def spooled() -> bool:
            return spool.exists() and outage_ids[-1].encode() in spool.read_bytes()

        await wait_until(spooled, 15.0, "the outage's audit rows spooled")
    finally:
        mend_proxy(proxy, mode)

    # Back by itself: no restart, no connection left stuck in the pool.
    async def ready() -> bool:
        return (await gw.call("GET", "/readyz"))[0] == 200

    await wait_until(ready, 10.0, "/readyz 200 after the database came back")
    fresh = await gw.login(alice)
    status, body, _ = await gw.call(
        "POST", "/auth/refresh", json={"refresh_token": alice_pair["refresh_token"]}
    )
    assert status == 200, body  # the refresh the outage refused was not spent
    status, _, _ = await gw.call("POST", "/auth/logout", fresh["access_token"])
    assert status == 204
    status, body, _ = await gw.call(
        "POST", "/auth/register", json={"username": f"new-{mode}", "password": PASSWORD}
    )
    assert status == 201, body
    status, body, _ = await gw.call("GET", "/users/me", root_pair["access_token"])
    assert status == 200
    assert body["username"] == root
    status, body, _ = await gw.call("GET", "/admin/users", root_pair["access_token"])
    assert status == 200
    assert {root, alice, late} <= {u["username"] for u in body["items"]}
    status, _, _ = await gw.call("GET", "/open/x", late_token)
    assert status == 200
    # The pool holds no connection that a cancelled call left half-used:
    # many calls at once all succeed.
    many = await asyncio.gather(
        *(gw.call("GET", "/users/me", root_pair["access_token"]) for _ in range(30))
    )
    assert [status for status, _, _ in many] == [200] * 30

    async def replayed() -> bool:
        return set(outage_ids) <= await audited_ids(direct_url)

    await wait_until(replayed, 15.0, "the spooled audit rows replayed into the database")


@pytest.mark.parametrize("mode", ["refuse", "reset"])
def test_users_create_with_the_database_down_says_so_in_one_line(
    mode: str, proxy: ProxyProcess, direct_url: str, tmp_path: Path, policies: Path
) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(f"auth:\n  {CHEAP_HASHING}\npolicies: policies/\n")
    proxy.switch(mode)
    created = users_create(
        config, "carol", "user", PASSWORD, {"GATEWAY_DATABASE_URL": through(proxy, direct_url)}
    )
    assert created.returncode == 1
    lines = created.stderr.strip().splitlines()
    assert len(lines) == 1, created.stderr
    assert lines[0].startswith("gateway users create: database postgresql+asyncpg://"), lines


# --- SQLite: a file another connection holds locked -----------------------------------


async def test_a_locked_sqlite_database_is_a_503_within_the_timeout_then_recovers(
    gateway: MakeGateway, sqlite_url: str, policies: Path
) -> None:
    client = await gateway(
        f"database:\n  timeout: {TIMEOUT}s\n" + identity_config(),
    )
    holder = sqlite3.connect(make_url(sqlite_url).database or "", timeout=0.1)
    holder.execute("BEGIN EXCLUSIVE")  # what a stuck writer in another process does
    try:
        started = time.monotonic()
        resp = await client.post("/auth/register", json={"username": "dora", "password": PASSWORD})
        taken = time.monotonic() - started
        body = await resp.json(content_type=None)
        assert resp.status == 503, body
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert resp.headers["Retry-After"] == "1"
        assert body["code"] == "database_down"
        assert taken < BOUND
    finally:
        holder.rollback()
        holder.close()
    resp = await client.post("/auth/register", json={"username": "dora", "password": PASSWORD})
    assert resp.status == 201, await resp.text()


# --- which failures mean "down" -------------------------------------------------------


class DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__("driver text that may quote SQL")
        self.sqlstate = sqlstate


def test_only_failures_to_reach_the_database_count_as_down() -> None:
    def dbapi(kind: type[sa_exc.DBAPIError], orig: Exception) -> sa_exc.DBAPIError:
        return kind("SELECT 1", {}, orig)

    down = [
        TimeoutError(),
        ConnectionRefusedError(),
        ConnectionResetError(),
        sa_exc.TimeoutError("QueuePool limit reached"),
        dbapi(sa_exc.OperationalError, Exception("database is locked")),
        dbapi(sa_exc.InterfaceError, Exception("connection is closed")),
        dbapi(sa_exc.DBAPIError, DriverError("57P03")),  # the server is starting up
        dbapi(sa_exc.DBAPIError, DriverError("08006")),  # connection failure
        dbapi(sa_exc.DBAPIError, DriverError("53300")),  # too many connections
    ]
    not_down = [
        dbapi(sa_exc.IntegrityError, DriverError("23505")),  # a taken username: 409
        dbapi(sa_exc.ProgrammingError, DriverError("42P01")),  # a bug: 500
        dbapi(sa_exc.DataError, DriverError("22001")),
        ValueError("not a database failure"),
    ]
    assert [unreachable(error) for error in down] == [True] * len(down)
    assert [unreachable(error) for error in not_down] == [False] * len(not_down)
