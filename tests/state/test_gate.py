"""The Redis gate: revocation, user state, role and rate limit in one Redis call.

Watched on the real Redis with MONITOR (only this test's key prefix counts):
one command per request on a rate-limited route. And the chain's order holds
inside the one call: a request refused for its token, its account or its role
never uses up its caller's rate limit.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from tests.conftest import MakeGateway
from tests.identity import Client, bearer, identity_config, login, make_user

LIMITED = """
  - {path: /limited/**, upstream: echo, strip_prefix: /limited, roles: [analyst],
     rate_limit: 2/min}
"""


@pytest.fixture
async def client(
    gateway: MakeGateway, policies: Path, echo: TestServer, redis_url: str, redis_prefix: str
) -> Client:
    text = identity_config(echo.port) + LIMITED
    return await gateway(text, redis_url=redis_url, redis_prefix=redis_prefix)


async def commands_during(redis_url: str, prefix: str, call: object) -> list[str]:
    """The Redis commands naming `prefix` that clients sent while `call` (a coroutine) ran."""
    seen: list[str] = []
    marker = f"{prefix}done"
    redis = Redis.from_url(redis_url)
    try:
        async with redis.monitor() as monitor:
            ready = asyncio.Event()

            async def watch() -> None:
                ready.set()
                async for command in monitor.listen():
                    text = str(command.get("command", ""))
                    if marker in text:
                        return
                    # commands a script runs are shown too, marked as Lua's: not round trips
                    if prefix in text and command.get("client_type") != "lua":
                        seen.append(text)

            watcher = asyncio.create_task(watch())
            await ready.wait()
            await call  # type: ignore[misc]
            await redis.echo(marker)  # everything before it has been seen once it shows
            await asyncio.wait_for(watcher, timeout=10)
    finally:
        await redis.aclose()
    return seen


async def test_one_redis_call_per_request(
    client: Client, redis_url: str, redis_prefix: str
) -> None:
    await make_user(client, "ann", role="analyst")
    token = bearer(await login(client, "ann"))
    assert (await client.get("/limited/x", headers=token)).status == 200  # the script is loaded
    statuses: list[int] = []

    async def request() -> None:
        response = await client.get("/limited/x", headers=token)
        statuses.append(response.status)

    seen = await commands_during(redis_url, redis_prefix, request())
    assert statuses == [200]  # the second of the limit's 2 a minute
    assert len(seen) == 1, seen
    assert seen[0].startswith("EVALSHA")


async def test_the_limit_is_counted_in_the_gate(client: Client) -> None:
    await make_user(client, "ann", role="analyst")
    token = bearer(await login(client, "ann"))
    first = await client.get("/limited/x", headers=token)
    assert first.status == 200
    assert first.headers["RateLimit-Remaining"] == "1"
    assert (await client.get("/limited/x", headers=token)).status == 200
    refused = await client.get("/limited/x", headers=token)
    assert refused.status == 429
    assert (await refused.json())["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1


async def test_a_role_refusal_does_not_use_the_limit(client: Client) -> None:
    user = await make_user(client, "bo", role="user")
    admin = await make_user(client, "root", role="admin")
    assert admin is not None
    token = bearer(await login(client, "bo"))
    for _ in range(4):
        assert (await client.get("/limited/x", headers=token)).status == 403
    # Promoted: the whole limit is still there.
    root = bearer(await login(client, "root"))
    changed = await client.patch(f"/admin/users/{user.id}", json={"role": "analyst"}, headers=root)
    assert changed.status == 200
    assert (await client.get("/limited/x", headers=token)).status == 200
    assert (await client.get("/limited/x", headers=token)).status == 200
    assert (await client.get("/limited/x", headers=token)).status == 429


async def test_a_revoked_token_does_not_use_the_limit(client: Client) -> None:
    await make_user(client, "ann", role="analyst")
    tokens = await login(client, "ann")
    old = bearer(tokens)
    assert (await client.post("/auth/logout", headers=old)).status == 204
    for _ in range(3):
        refused = await client.get("/limited/x", headers=old)
        assert refused.status == 401
    fresh = bearer(await login(client, "ann"))
    assert (await client.get("/limited/x", headers=fresh)).status == 200
    assert (await client.get("/limited/x", headers=fresh)).status == 200


async def test_another_instances_logout_holds_through_the_gate(
    gateway: MakeGateway, policies: Path, echo: TestServer, redis_url: str, redis_prefix: str
) -> None:
    text = identity_config(echo.port) + LIMITED
    a = await gateway(text, redis_url=redis_url, redis_prefix=redis_prefix)
    b = await gateway(text, redis_url=redis_url, redis_prefix=redis_prefix)
    await make_user(a, "ann", role="analyst")
    token = bearer(await login(a, "ann"))
    assert (await b.get("/limited/x", headers=token)).status == 200
    assert (await a.post("/auth/logout", headers=token)).status == 204
    refused = await b.get("/limited/x", headers=token)
    assert refused.status == 401
    assert "revoked" in (await refused.json())["detail"]
