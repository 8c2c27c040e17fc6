"""Shared state survives a Redis outage: Redis is a cache of the database, repaired from it.

Real processes: `gateway serve` instances, a redis-server of the test's own
that is SIGKILLed and started again (with its old data, or empty), and
PostgreSQL or SQLite. While Redis is down an admin demotes a user,
deactivates another and a third logs out; every instance must enforce it
once Redis is back, and again after the instances restart.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from argon2 import PasswordHasher
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from gateway.state.identity import USER_TTL, RedisIdentity, UserState
from gateway.state.redis_health import BACKOFF
from gateway.store.engine import make_engine, make_sessions
from gateway.store.users import UserStore
from tests.conftest import MakeGateway
from tests.identity import PASSWORD, bearer, identity_config, login, make_user
from tests.processes import free_port, serve_command, stop, wait_for_port
from tests.redisproc import RedisServer

T = TypeVar("T")

# The admin API is rate limited, so its requests take the gate's one-call
# path (gateway/state/gate.py); /users/me is not, so it takes identity.check.
RATE_LIMITED_ADMIN = "handler: admin, roles: [admin]}"
REPAIR_BOUND = 10.0  # seconds; the issue asks for 5 s, doubled for a loaded CI machine
OUTAGE_BOUND = 15.0  # seconds; memory is refreshed from the database every 5 s


def config_text(redis_failure: str = "open") -> str:
    text = identity_config().replace(
        RATE_LIMITED_ADMIN,
        "handler: admin, roles: [admin], rate_limit: {limit: 10000, per: 1m, key: user}}",
    )
    assert "rate_limit" in text, "identity_config() no longer routes /admin/** as expected"
    return f"server: {{redis_failure: {redis_failure}}}\n{text}"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """An empty redis-server of this test's own (not the shared one: it gets killed)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


# --- the gateway processes --------------------------------------------------


@dataclass
class Instance:
    """One `gateway serve` process; `restart` starts it again on a new port."""

    config: Path
    env: dict[str, str]
    log: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        self.port = free_port()
        with open(self.log, "ab") as stderr:
            self.process = subprocess.Popen(
                serve_command(self.config, self.port),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=self.env,
            )

    def ready(self) -> None:
        assert self.process is not None
        wait_for_port(self.port, self.process, seconds=30)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


def run_instances(instances: list[Instance]) -> None:
    """Start them side by side (each takes a second or two), then wait for all."""
    for instance in instances:
        instance.launch()
    for instance in instances:
        instance.ready()


def instances(
    tmp_path: Path, database: str, redis: str, failures: tuple[str, ...] = ("open", "open")
) -> list[Instance]:
    prefix = f"gwtest:{uuid.uuid4().hex[:10]}:"
    made = []
    for index, failure in enumerate(failures):
        folder = tmp_path / f"gw{index}"
        folder.mkdir()
        (folder / "policies").symlink_to(tmp_path / "policies")
        config = folder / "routes.yaml"
        config.write_text(config_text(failure))
        env = {
            **os.environ,
            "GATEWAY_DATABASE_URL": database,
            "GATEWAY_REDIS_URL": redis,
            "GATEWAY_REDIS_PREFIX": prefix,
            "PYTHONUNBUFFERED": "1",
        }
        made.append(Instance(config, env, tmp_path / f"gw{index}.log"))
    return made


# --- plain HTTP, as a client would ----------------------------------------

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy


def call(
    port: int, method: str, path: str, token: str | None = None, body: object = None
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with OPENER.open(request, timeout=10) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    return status, json.loads(raw) if raw else {}


def sign_in(port: int, username: str) -> dict[str, Any]:
    status, body = call(
        port, "POST", "/auth/login", body={"username": username, "password": PASSWORD}
    )
    assert status == 200, body
    return body


def jti_of(access_token: str) -> str:
    payload = access_token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["jti"])


def answers(port: int, tokens: dict[str, str]) -> dict[str, tuple[int, str | None]]:
    """What each user's token gets, on the gate's path (/admin) and identity.check's (/users/me)."""
    seen = {}
    for who, token in tokens.items():
        for path in ("/admin/users", "/users/me"):
            status, body = call(port, "GET", path, token)
            seen[f"{who} {path}"] = (status, body.get("code") if status >= 400 else None)
    return seen


BEFORE = {
    "demoted /admin/users": (200, None),
    "demoted /users/me": (200, None),
    "deactivated /admin/users": (403, "role_forbidden"),
    "deactivated /users/me": (200, None),
    "logged-out /admin/users": (403, "role_forbidden"),
    "logged-out /users/me": (200, None),
}
AFTER = {
    "demoted /admin/users": (403, "role_forbidden"),
    "demoted /users/me": (200, None),  # still active: refused only where the role matters
    "deactivated /admin/users": (401, "user_inactive"),
    "deactivated /users/me": (401, "user_inactive"),
    "logged-out /admin/users": (401, "token_revoked"),
    "logged-out /users/me": (401, "token_revoked"),
}


def eventually(probe: Callable[[], T], done: Callable[[T], bool], seconds: float) -> T:
    """Probe until `done` (a bound, not a timing assertion: it proves there is no hang)."""
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


# --- the database -----------------------------------------------------------


async def seed(url: str) -> dict[str, str]:
    """root (admin), nina (admin, to be demoted), omar and pia (users): name → id."""
    engine = make_engine(url)
    try:
        store = UserStore(make_sessions(engine))
        # argon2 at the config's cheapest (tests/identity.py CHEAP_HASHING)
        password_hash = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash(PASSWORD)
        roles = {"root": "admin", "nina": "admin", "omar": "user", "pia": "user"}
        return {
            name: (await store.create(name, password_hash, role)).id for name, role in roles.items()
        }
    finally:
        await engine.dispose()


def repaired(redis_url: str, prefix: str, ids: dict[str, str], revoked_jti: str) -> bool:
    """Redis holds what the database says: the keys were rebuilt, not merely bypassed."""
    redis = SyncRedis.from_url(redis_url)
    try:
        nina = redis.get(f"{prefix}user:{ids['nina']}") or b""
        omar = redis.get(f"{prefix}user:{ids['omar']}") or b""
        return (
            nina.startswith(b"user\t1\tnina\t")
            and omar.startswith(b"user\t0\tomar\t")
            and bool(redis.exists(f"{prefix}rev:{revoked_jti}"))
        )
    finally:
        redis.close()


# --- the tests ----------------------------------------------------------------


@pytest.mark.parametrize("appendonly", [True, False], ids=["back-with-old-data", "back-empty"])
def test_changes_made_while_redis_is_down_hold_on_every_instance_once_it_is_back(
    tmp_path: Path, policies: Path, postgres_url: str, appendonly: bool
) -> None:
    redis = RedisServer(tmp_path / "redis", appendonly=appendonly)
    redis.start()
    ids = asyncio.run(seed(postgres_url))
    a, b = instances(tmp_path, postgres_url, redis.url)
    prefix = a.env["GATEWAY_REDIS_PREFIX"]
    try:
        run_instances([a, b])
        root = sign_in(a.port, "root")["access_token"]
        logged_out = sign_in(b.port, "pia")["access_token"]
        tokens = {
            "demoted": sign_in(b.port, "nina")["access_token"],
            "deactivated": sign_in(b.port, "omar")["access_token"],
            "logged-out": logged_out,
        }
        assert answers(a.port, tokens) == answers(b.port, tokens) == BEFORE

        redis.kill()  # with appendonly, Redis will come back holding the states above
        demoted = call(a.port, "PATCH", f"/admin/users/{ids['nina']}", root, {"role": "user"})
        assert demoted[0] == 200, demoted
        deactivated = call(a.port, "PATCH", f"/admin/users/{ids['omar']}", root, {"active": False})
        assert deactivated[0] == 200, deactivated
        assert call(a.port, "POST", "/auth/logout", logged_out)[0] == 204

        # The instance that made the changes holds them at once ...
        assert answers(a.port, tokens) == AFTER
        # ... and the other reads them from the database while Redis is down.
        seen = eventually(lambda: answers(b.port, tokens), AFTER.__eq__, OUTAGE_BOUND)
        assert seen == AFTER

        redis.start()
        state_repaired = eventually(
            lambda: repaired(redis.url, prefix, ids, jti_of(logged_out)), bool, REPAIR_BOUND
        )
        assert state_repaired, "Redis was not rebuilt from the database"
        time.sleep(BACKOFF + 0.5)  # past the back-off: both ask Redis again, not their memory
        assert answers(a.port, tokens) == answers(b.port, tokens) == AFTER

        # Both restart (local memory gone): the repaired Redis still says so.
        a.stop()
        b.stop()
        run_instances([a, b])
        assert answers(a.port, tokens) == answers(b.port, tokens) == AFTER
        assert call(b.port, "GET", "/admin/users", root)[0] == 200  # the admin is untouched
    finally:
        a.stop()
        b.stop()
        redis.kill()


def test_readyz_reports_redis_degraded_when_open_and_not_ready_when_closed(
    tmp_path: Path, policies: Path, sqlite_url: str, redis_server: RedisServer
) -> None:
    opened, closed = instances(tmp_path, sqlite_url, redis_server.url, ("open", "closed"))
    try:
        run_instances([opened, closed])
        for instance in (opened, closed):
            assert call(instance.port, "GET", "/readyz")[1]["redis"] == "ok"

        redis_server.kill()
        started = time.monotonic()
        status, body = call(opened.port, "GET", "/readyz")
        assert (status, body["status"], body["redis"]) == (200, "ready", "degraded")
        status, body = call(closed.port, "GET", "/readyz")
        assert (status, body["code"]) == (503, "redis_down")
        assert time.monotonic() - started < 6  # no hang: each PING is bounded by 1 s

        redis_server.start()
        for instance in (opened, closed):
            status, body = eventually(
                lambda i=instance: call(i.port, "GET", "/readyz"),  # type: ignore[misc]
                lambda answer: answer[0] == 200 and answer[1].get("redis") == "ok",
                REPAIR_BOUND,
            )
            assert (status, body.get("redis")) == (200, "ok")
    finally:
        opened.stop()
        closed.stop()


def test_readyz_does_not_hang_on_a_redis_that_accepts_but_never_answers(
    tmp_path: Path, policies: Path, sqlite_url: str, redis_server: RedisServer
) -> None:
    (instance,) = instances(tmp_path, sqlite_url, redis_server.url, ("closed",))
    assert redis_server.process is not None
    try:
        run_instances([instance])
        redis_server.process.send_signal(signal.SIGSTOP)  # the kernel still accepts connections
        try:
            started = time.monotonic()
            status, body = call(instance.port, "GET", "/readyz")
            assert (status, body["code"]) == (503, "redis_down")
            assert time.monotonic() - started < 3  # 3x the 1 s PING bound
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
    finally:
        instance.stop()


async def test_readyz_without_redis_says_not_configured(
    gateway: MakeGateway, policies: Path
) -> None:
    client = await gateway(config_text())
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["redis"] == "not configured"


async def test_redis_that_lost_its_data_without_an_error_is_rebuilt(
    gateway: MakeGateway, policies: Path, sqlite_url: str, redis_server: RedisServer
) -> None:
    """No instance sees a failure (FLUSHALL keeps connections up): the epoch marker tells."""
    shared = {"database_url": sqlite_url, "redis_url": redis_server.url, "redis_prefix": "gw:"}
    a = await gateway(config_text(), **shared)
    b = await gateway(config_text(), **shared)
    await make_user(a, "pia")
    tokens = await login(b, "pia")
    assert (await a.post("/auth/logout", headers=bearer(tokens))).status == 204
    assert (
        await b.get("/users/me", headers=bearer(tokens))
    ).status == 401  # B learnt it from Redis

    redis = Redis.from_url(redis_server.url)
    try:
        await redis.flushall()
        deadline = time.monotonic() + REPAIR_BOUND
        while not await redis.exists(f"gw:rev:{jti_of(tokens['access_token'])}"):
            assert time.monotonic() < deadline, "the lost revocation was not rebuilt"
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
    resp = await b.get("/users/me", headers=bearer(tokens))
    assert resp.status == 401
    assert (await resp.json())["code"] == "token_revoked"


async def test_a_missing_user_key_is_read_from_the_database_not_from_memory(
    gateway: MakeGateway, policies: Path, sqlite_url: str, redis_server: RedisServer
) -> None:
    shared = {"database_url": sqlite_url, "redis_url": redis_server.url, "redis_prefix": "gw:"}
    client = await gateway(config_text(), **shared)
    await make_user(client, "root", "admin")
    pia = await make_user(client, "pia", "admin")
    token = bearer(await login(client, "pia"))
    assert (await client.get("/admin/users", headers=token)).status == 200  # remembered: admin

    # Demoted in the database by a writer whose Redis write was lost; the key then expired.
    await UserStore(make_sessions(make_engine(sqlite_url))).update(pia.id, role="user")
    redis = Redis.from_url(redis_server.url)
    try:
        await redis.delete(f"gw:user:{pia.id}")
        for path in ("/admin/users", "/admin/users/" + pia.id):  # the gate's path, twice
            assert (await client.get(path, headers=token)).status == 403
        written = await redis.get(f"gw:user:{pia.id}")
        assert (written or b"").startswith(b"user\t1\tpia\t")  # written back
        assert 0 < await redis.ttl(f"gw:user:{pia.id}") <= USER_TTL
    finally:
        await redis.aclose()


async def test_a_rebuild_never_overwrites_a_change_written_after_its_read_began(
    redis_server: RedisServer,
) -> None:
    redis = Redis.from_url(redis_server.url)
    identity = RedisIdentity(redis, "gw:")
    try:
        # A rebuild reads the database at `since`; then an admin's change lands.
        seconds, micros = await redis.time()
        since = int(seconds) * 1_000_000 + int(micros)
        await identity.set_user("u1", UserState("user", False, "ann"))  # newer than the read
        await redis.set("gw:user:u2", "admin\t1\tbo")  # stale, from before stamps existed
        old = {"u1": UserState("admin", True, "ann"), "u2": UserState("user", True, "bo")}
        assert await identity.write_all(old, [("jti-1", time.time() + 60)], since) == 1

        ann = await redis.get("gw:user:u1")
        assert (ann or b"").startswith(b"user\t0\tann\t")  # the change stays
        bo = await redis.get("gw:user:u2")
        assert bo == f"user\t1\tbo\t{since}".encode()  # the stale value was replaced
        assert 0 < await redis.ttl("gw:user:u1") <= USER_TTL
        assert 0 < await redis.ttl("gw:rev:jti-1") <= 61

        # A later rebuild (its read began after the change) does write.
        seconds, micros = await redis.time()
        later = int(seconds) * 1_000_000 + int(micros)
        assert await identity.write_all({"u1": UserState("user", True, "ann")}, [], later) == 1
        assert await redis.get("gw:user:u1") == f"user\t1\tann\t{later}".encode()
    finally:
        await redis.aclose()
