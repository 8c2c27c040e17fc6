"""Authentication and policy end to end: token → role → route roles → the upstream's headers.

A real echo upstream reports what it received, so the identity headers are
checked as the upstream sees them. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.store.users import UserRecord
from tests.conftest import MakeGateway, MakeUpstream
from tests.identity import Client, bearer, identity_config, login, make_user

BARE_CHALLENGE = 'Bearer realm="gateway"'


def echo_upstream() -> web.Application:
    """Answers with the path, query and every header (as pairs: repeats stay visible)."""

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "path": request.path,
                "query": request.query_string,
                "headers": [[k, v] for k, v in request.headers.items()],
            }
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def echo(upstream: MakeUpstream) -> TestServer:
    return await upstream(echo_upstream())


@pytest.fixture
async def client(
    gateway: MakeGateway, policies: Path, echo: TestServer, database_url: str
) -> Client:
    return await gateway(identity_config(echo.port), database_url=database_url)


def user_headers(seen: dict[str, Any]) -> list[tuple[str, str]]:
    """The X-User-* headers the upstream received, in order."""
    return [(k.lower(), v) for k, v in seen["headers"] if k.lower().startswith("x-user-")]


def forge(
    user_id: str = "", secret: str | None = None, drop: tuple[str, ...] = (), **changes: Any
) -> str:
    """An access token made outside the gateway: by default valid, with the suite's secret.

    `changes` replace claims, `drop` leaves claims out.
    """
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user_id or uuid.uuid4().hex,
        "role": "user",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 300,
        "iss": "gateway",
        "typ": "access",
    }
    claims.update(changes)
    for name in drop:
        del claims[name]
    key = (secret or os.environ["GATEWAY_JWT_SECRET"]).encode()
    return jwt.encode(claims, key, algorithm="HS256")


async def refused(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = await resp.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["request_id"] == resp.headers["X-Request-Id"]
    return body


async def person(client: Client, name: str, role: str) -> tuple[UserRecord, dict[str, str]]:
    user = await make_user(client, name, role)
    return user, bearer(await login(client, name))


# --- roles ----------------------------------------------------------------------


async def test_user_is_denied_a_role_route_and_admitted_to_an_open_one(client: Client) -> None:
    user, headers = await person(client, "ursula", "user")
    resp = await client.get("/analytics/report", headers=headers)
    body = await refused(resp, 403, "role_forbidden")
    assert "'user'" in body["detail"]
    assert "analyst" in body["detail"]
    assert "WWW-Authenticate" not in resp.headers  # 403 is not a challenge

    resp = await client.get("/open/thing?x=1", headers=headers)
    assert resp.status == 200
    seen = await resp.json()
    assert seen["path"] == "/thing"
    assert seen["query"] == "x=1"
    assert user_headers(seen) == [("x-user-id", user.id), ("x-user-roles", "user")]


@pytest.mark.parametrize(
    ("role", "roles_header"),
    [("analyst", "analyst,user"), ("admin", "admin,analyst,user")],
)
async def test_a_listed_or_inheriting_role_passes(
    client: Client, role: str, roles_header: str
) -> None:
    user, headers = await person(client, f"the-{role}", role)
    resp = await client.get("/analytics/report", headers=headers)
    assert resp.status == 200, await resp.text()
    seen = await resp.json()
    assert seen["path"] == "/report"
    assert user_headers(seen) == [("x-user-id", user.id), ("x-user-roles", roles_header)]


async def test_the_role_comes_from_the_user_not_the_token(client: Client) -> None:
    """A validly signed token claiming `admin` for a plain user still acts as that user."""
    user = await make_user(client, "mallory", "user")
    headers = bearer(forge(user.id, role="admin"))
    await refused(await client.get("/analytics/x", headers=headers), 403, "role_forbidden")
    resp = await client.get("/open/x", headers=headers)
    assert resp.status == 200
    assert ("x-user-roles", "user") in user_headers(await resp.json())


# --- identity headers -------------------------------------------------------------


SPOOFED = {
    "X-User-Id": "someone-else",
    "X-User-Roles": "admin,analyst,user",
    "x-user-email": "boss@example.org",
    "X-USER-NAME": "boss",
}


async def test_client_sent_identity_headers_never_reach_the_upstream(client: Client) -> None:
    user, headers = await person(client, "eve", "user")
    resp = await client.get("/open/x", headers={**headers, **SPOOFED})
    assert resp.status == 200
    seen = await resp.json()
    # exactly the gateway's two, once each
    assert user_headers(seen) == [("x-user-id", user.id), ("x-user-roles", "user")]

    # a spoofed role does not open a role route either
    resp = await client.get("/analytics/x", headers={**headers, **SPOOFED})
    await refused(resp, 403, "role_forbidden")


async def test_auth_none_routes_send_no_identity_at_all(client: Client) -> None:
    _, headers = await person(client, "nat", "admin")
    for extra in ({}, headers, {**headers, **SPOOFED}, SPOOFED):
        resp = await client.get("/public/x", headers=extra)
        assert resp.status == 200, await resp.text()
        seen = await resp.json()
        assert user_headers(seen) == []
        assert "authorization" not in {k.lower() for k, _ in seen["headers"]}


async def test_auth_none_needs_no_token_and_ignores_a_bad_one(client: Client) -> None:
    assert (await client.get("/public/x")).status == 200
    resp = await client.get("/public/x", headers=bearer("not.a.token"))
    assert resp.status == 200
    expired = forge(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)
    assert (await client.get("/public/x", headers=bearer(expired))).status == 200


# --- 401: the challenge, exactly ---------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc"],
)
async def test_no_bearer_token_gets_the_bare_challenge(
    client: Client, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    for path in ("/open/x", "/analytics/x", "/users/me"):
        resp = await client.get(path, headers=headers)
        await refused(resp, 401, "missing_token")
        assert resp.headers["WWW-Authenticate"] == BARE_CHALLENGE


async def test_a_malformed_token_is_invalid_token(client: Client) -> None:
    resp = await client.get("/open/x", headers=bearer("garbage"))
    body = await refused(resp, 401, "token_malformed")
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="gateway", error="invalid_token"')
    assert f'error_description="{body["detail"]}"' in challenge


async def test_another_secret_is_a_bad_signature(client: Client) -> None:
    user = await make_user(client, "sig", "admin")
    token = forge(user.id, secret="some-other-secret-of-32-bytes-or-more!!")
    resp = await client.get("/open/x", headers=bearer(token))
    await refused(resp, 401, "token_bad_signature")
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def test_an_expired_token_is_refused_beyond_the_leeway(client: Client) -> None:
    user = await make_user(client, "old", "admin")
    now = int(time.time())
    expired = forge(user.id, role="admin", iat=now - 1000, exp=now - 31 - 60)
    resp = await client.get("/open/x", headers=bearer(expired))
    await refused(resp, 401, "token_expired")
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    # within the 30 s leeway it still passes (clock skew between machines)
    lenient = forge(user.id, role="admin", iat=now - 1000, exp=now - 5)
    assert (await client.get("/open/x", headers=bearer(lenient))).status == 200


async def test_alg_none_is_refused(client: Client) -> None:
    user = await make_user(client, "nobody-signs", "admin")
    now = int(time.time())
    claims = {
        "sub": user.id,
        "role": "admin",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 300,
        "iss": "gateway",
        "typ": "access",
    }
    unsigned = jwt.encode(claims, "", algorithm="none")
    resp = await client.get("/analytics/x", headers=bearer(unsigned))
    await refused(resp, 401, "token_alg_not_allowed")
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("changes", "drop", "code"),
    [
        ({"iss": "someone-else"}, (), "token_wrong_issuer"),
        ({"typ": "refresh"}, (), "token_wrong_type"),
        ({}, ("jti",), "token_missing_claim"),
        ({"iat": int(time.time()) + 3600}, (), "token_not_yet_valid"),
    ],
)
async def test_other_claims_are_checked(
    client: Client, changes: dict[str, Any], drop: tuple[str, ...], code: str
) -> None:
    user = await make_user(client, "claims", "admin")
    resp = await client.get("/open/x", headers=bearer(forge(user.id, drop=drop, **changes)))
    await refused(resp, 401, code)
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def test_a_valid_token_for_no_such_user_is_user_inactive(client: Client) -> None:
    resp = await client.get("/open/x", headers=bearer(forge(uuid.uuid4().hex, role="admin")))
    await refused(resp, 401, "user_inactive")
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def test_a_forged_token_for_a_real_user_works_like_the_real_one(client: Client) -> None:
    """The forging helper is sound: the refusals above are about the one thing changed."""
    user = await make_user(client, "real", "analyst")
    resp = await client.get("/analytics/x", headers=bearer(forge(user.id, role="analyst")))
    assert resp.status == 200, await resp.text()
    assert user_headers(await resp.json())[0] == ("x-user-id", user.id)
