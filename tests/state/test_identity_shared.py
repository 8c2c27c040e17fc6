"""Two gateway instances sharing one database and one Redis: a logout, a deactivation
or a role change on one holds on the other at its next request."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import MakeGateway
from tests.identity import bearer, identity_config, login, make_user
from tests.processes import free_port


async def test_logout_deactivation_and_role_change_cross_instances(
    gateway: MakeGateway,
    policies: Path,
    echo: TestServer,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    text = identity_config(echo.port)
    shared = {"database_url": database_url, "redis_url": redis_url, "redis_prefix": redis_prefix}
    a = await gateway(text, **shared)
    b = await gateway(text, **shared)

    await make_user(a, "root", "admin")
    analyst = await make_user(a, "nina", "analyst")
    admin = bearer(await login(a, "root"))

    # logout on A, refused on B at the next request
    session = await login(b, "nina")
    assert (await b.get("/analytics/x", headers=bearer(session))).status == 200
    assert (await a.post("/auth/logout", headers=bearer(session))).status == 204
    resp = await b.get("/analytics/x", headers=bearer(session))
    assert resp.status == 401
    assert (await resp.json())["code"] == "token_revoked"

    # role change on A: B answers 403 to the same token
    token = bearer(await login(a, "nina"))
    assert (await b.get("/analytics/x", headers=token)).status == 200
    patched = await a.patch(f"/admin/users/{analyst.id}", json={"role": "user"}, headers=admin)
    assert patched.status == 200
    assert (await b.get("/analytics/x", headers=token)).status == 403
    assert (await b.get("/open/x", headers=token)).status == 200

    # deactivation on B: A answers 401
    deactivated = await b.patch(f"/admin/users/{analyst.id}", json={"active": False}, headers=admin)
    assert deactivated.status == 200
    resp = await a.get("/open/x", headers=token)
    assert resp.status == 401
    assert (await resp.json())["code"] == "user_inactive"


async def test_user_created_on_one_instance_is_known_to_the_other(
    gateway: MakeGateway,
    policies: Path,
    echo: TestServer,
    sqlite_url: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    text = identity_config(echo.port)
    shared = {"database_url": sqlite_url, "redis_url": redis_url, "redis_prefix": redis_prefix}
    a = await gateway(text, **shared)
    b = await gateway(text, **shared)
    await make_user(a, "root", "admin")
    admin = bearer(await login(a, "root"))
    created = await a.post(
        "/admin/users",
        json={"username": "omar", "password": "a long enough password", "role": "analyst"},
        headers=admin,
    )
    assert created.status == 201
    token = bearer(await login(b, "omar", "a long enough password"))
    assert (await b.get("/analytics/x", headers=token)).status == 200


async def test_redis_unreachable_keeps_serving_on_local_state(
    gateway: MakeGateway, policies: Path, echo: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with caplog.at_level(logging.ERROR, logger="gateway.redis"):
        client = await gateway(identity_config(echo.port), redis_url=dead)
        await make_user(client, "pia", "analyst")
        tokens = await login(client, "pia")
        assert (await client.get("/analytics/x", headers=bearer(tokens))).status == 200
        assert (await client.post("/auth/logout", headers=bearer(tokens))).status == 204
        assert (await client.get("/analytics/x", headers=bearer(tokens))).status == 401
    assert any("redis unreachable" in r.getMessage() for r in caplog.records)
