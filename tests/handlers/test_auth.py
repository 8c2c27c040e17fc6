"""Login, refresh rotation and reuse detection, logout and revocation, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from gateway.services import SERVICES
from tests.conftest import MakeGateway
from tests.identity import PASSWORD, Client, bearer, identity_config, login, make_user


@pytest.fixture
async def client(
    gateway: MakeGateway, policies: Path, echo: TestServer, database_url: str
) -> Client:
    return await gateway(identity_config(echo.port), database_url=database_url)


async def test_login_gives_a_working_pair(client: Client) -> None:
    user = await make_user(client, "alice", "analyst")
    tokens = await login(client, "alice")
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 900
    assert tokens["refresh_token"]
    resp = await client.get("/analytics/report", headers=bearer(tokens))
    assert resp.status == 200
    seen = (await resp.json())["headers"]
    assert seen["X-User-Id"] == user.id
    assert seen["X-User-Roles"] == "analyst,user"
    assert "Authorization" not in seen  # not forwarded unless the upstream asks for it


async def test_wrong_password_and_unknown_user_look_the_same(client: Client) -> None:
    await make_user(client, "bob")
    wrong = await client.post("/auth/login", json={"username": "bob", "password": "nope" * 4})
    unknown = await client.post("/auth/login", json={"username": "nobody", "password": "x" * 12})
    assert wrong.status == unknown.status == 401
    assert (await wrong.json())["detail"] == (await unknown.json())["detail"]
    assert (await wrong.json())["code"] == "invalid_credentials"


async def test_login_validates_its_body(client: Client) -> None:
    resp = await client.post("/auth/login", json={"username": "x"})
    assert resp.status == 400
    assert "password" in (await resp.json())["detail"]
    resp = await client.post("/auth/login", data=b"{", headers={"Content-Type": "application/json"})
    assert resp.status == 400


async def test_refresh_rotates_and_a_reused_token_revokes_the_family(client: Client) -> None:
    await make_user(client, "carol")
    first = await login(client, "carol")
    resp = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert resp.status == 200
    second = await resp.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert (await client.get("/users/me", headers=bearer(second))).status == 200

    # the first refresh token is spent: presenting it again is theft or replay
    replay = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status == 401
    assert (await replay.json())["code"] == "refresh_reused"
    assert 'error="invalid_token"' in replay.headers["WWW-Authenticate"]
    # ... so the whole family is revoked: the newer refresh token and its access token
    again = await client.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert again.status == 401
    me = await client.get("/users/me", headers=bearer(second))
    assert me.status == 401
    assert (await me.json())["code"] == "token_revoked"


async def test_unknown_refresh_token_is_401(client: Client) -> None:
    resp = await client.post("/auth/refresh", json={"refresh_token": "not-a-token"})
    assert resp.status == 401
    assert (await resp.json())["code"] == "refresh_invalid"


async def test_two_concurrent_refreshes_exactly_one_wins(client: Client) -> None:
    await make_user(client, "dave")
    tokens = await login(client, "dave")
    body = {"refresh_token": tokens["refresh_token"]}
    results = await asyncio.gather(*(client.post("/auth/refresh", json=body) for _ in range(2)))
    statuses = sorted(r.status for r in results)
    assert statuses == [200, 401]


async def test_logout_ends_the_access_token_and_its_family(client: Client) -> None:
    await make_user(client, "erin")
    tokens = await login(client, "erin")
    other = await login(client, "erin")  # a second session stays alive
    resp = await client.post("/auth/logout", headers=bearer(tokens))
    assert resp.status == 204
    after = await client.get("/users/me", headers=bearer(tokens))
    assert after.status == 401
    assert (await after.json())["code"] == "token_revoked"
    refresh = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refresh.status == 401
    assert (await client.get("/users/me", headers=bearer(other))).status == 200


async def test_logout_needs_a_token(client: Client) -> None:
    resp = await client.post("/auth/logout")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'


async def test_deactivation_and_role_change_apply_at_the_next_request(client: Client) -> None:
    admin = await make_user(client, "root", "admin")
    analyst = await make_user(client, "frank", "analyst")
    admin_headers = bearer(await login(client, "root"))
    frank = bearer(await login(client, "frank"))
    assert (await client.get("/analytics/x", headers=frank)).status == 200

    resp = await client.patch(
        f"/admin/users/{analyst.id}", json={"role": "user"}, headers=admin_headers
    )
    assert resp.status == 200
    denied = await client.get("/analytics/x", headers=frank)
    assert denied.status == 403  # same token, new role
    assert (await denied.json())["code"] == "role_forbidden"
    assert (await client.get("/open/x", headers=frank)).status == 200

    resp = await client.patch(
        f"/admin/users/{analyst.id}", json={"active": False}, headers=admin_headers
    )
    assert resp.status == 200
    gone = await client.get("/open/x", headers=frank)
    assert gone.status == 401
    assert (await gone.json())["code"] == "user_inactive"
    login_again = await client.post("/auth/login", json={"username": "frank", "password": PASSWORD})
    assert login_again.status == 401
    assert admin.role == "admin"


async def test_repeated_failed_logins_are_throttled(
    gateway: MakeGateway, policies: Path, sqlite_url: str
) -> None:
    client = await gateway(identity_config(auth_extra="login_failures: 3/15m"))
    await make_user(client, "gina")
    for _ in range(3):
        resp = await client.post("/auth/login", json={"username": "gina", "password": "w" * 12})
        assert resp.status == 401
    blocked = await client.post("/auth/login", json={"username": "gina", "password": PASSWORD})
    assert blocked.status == 429
    assert int(blocked.headers["Retry-After"]) > 0
    assert (await blocked.json())["code"] == "login_throttled"


async def test_register_when_open_and_when_closed(
    client: Client, gateway: MakeGateway, policies: Path
) -> None:
    resp = await client.post("/auth/register", json={"username": "hank", "password": "short"})
    assert resp.status == 400
    assert "at least 12" in (await resp.json())["detail"]
    resp = await client.post("/auth/register", json={"username": "hank", "password": PASSWORD})
    assert resp.status == 201
    user = await resp.json()
    assert user["role"] == "user"
    assert user["active"] is True
    assert isinstance(user["id"], str)
    assert "password" not in str(user)
    assert "hash" not in str(user)
    taken = await client.post("/auth/register", json={"username": "hank", "password": PASSWORD})
    assert taken.status == 409
    assert (await taken.json())["code"] == "username_taken"

    closed = await gateway(
        identity_config().replace("allow_registration: true", "allow_registration: false")
    )
    resp = await closed.post("/auth/register", json={"username": "ivy", "password": PASSWORD})
    assert resp.status == 403
    assert (await resp.json())["code"] == "registration_closed"


async def test_rehash_on_login_when_parameters_change(client: Client) -> None:
    from argon2 import PasswordHasher

    services = client.app[SERVICES]
    old = PasswordHasher(time_cost=2, memory_cost=64, parallelism=1).hash(PASSWORD)
    user = await services.users.create("jack", old, "user")
    await login(client, "jack")
    stored = await services.users.by_id(user.id)
    assert stored is not None
    assert stored.password_hash != old  # upgraded to the configured parameters
    await login(client, "jack")  # and still verifies


async def test_jwks_is_served(client: Client) -> None:
    resp = await client.get("/.well-known/jwks.json")
    assert resp.status == 200
    assert await resp.json() == {"keys": []}  # HS256: nothing public to publish
