"""Cookie mode (auth.refresh_cookie): the refresh token travels in an HttpOnly; Secure;
SameSite=Strict cookie, never in a body a script can read, and a refresh from the
cookie needs the CSRF double submit (X-CSRF-Token repeating the gateway_csrf cookie)."""

from __future__ import annotations

from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from aiohttp import ClientResponse

from tests.conftest import MakeGateway
from tests.identity import PASSWORD, Client, identity_config, make_user


@pytest.fixture
async def client(gateway: MakeGateway, policies: Path) -> Client:
    client = await gateway(identity_config(auth_extra="refresh_cookie: true"))
    await make_user(client, "cleo")
    return client


def cookies_of(response: ClientResponse) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie", []):
        jar.load(header)
    return jar


async def sign_in(client: Client) -> tuple[dict, SimpleCookie]:
    response = await client.post("/auth/login", json={"username": "cleo", "password": PASSWORD})
    assert response.status == 200
    return await response.json(), cookies_of(response)


def sent(jar: SimpleCookie, csrf: str | None = None) -> dict[str, str]:
    """What a browser on the same site sends back: both cookies, and the header the
    page copies from the readable CSRF cookie (unless `csrf` says otherwise)."""
    headers = {
        "Cookie": f"gateway_refresh={jar['gateway_refresh'].value}; "
        f"gateway_csrf={jar['gateway_csrf'].value}",
        "X-CSRF-Token": jar["gateway_csrf"].value if csrf is None else csrf,
    }
    return headers


async def test_the_refresh_token_is_only_in_an_httponly_cookie(client: Client) -> None:
    body, jar = await sign_in(client)
    assert body["refresh_token"] is None
    assert body["access_token"]
    refresh = jar["gateway_refresh"]
    assert refresh["httponly"] is True
    assert refresh["secure"] is True
    assert refresh["samesite"] == "Strict"
    assert refresh["path"] == "/auth"
    csrf = jar["gateway_csrf"]
    assert not csrf["httponly"]  # the page must read it to echo it
    assert csrf["secure"] is True
    assert csrf["samesite"] == "Strict"


async def test_a_refresh_from_the_cookie_rotates_it(client: Client) -> None:
    _, jar = await sign_in(client)
    response = await client.post("/auth/refresh", json={}, headers=sent(jar))
    assert response.status == 200
    assert (await response.json())["refresh_token"] is None
    rotated = cookies_of(response)
    assert rotated["gateway_refresh"].value != jar["gateway_refresh"].value
    # The spent cookie is refused, and its whole family with it.
    again = await client.post("/auth/refresh", json={}, headers=sent(jar))
    assert again.status == 401
    assert (await again.json())["code"] == "refresh_reused"


@pytest.mark.parametrize("csrf", ["", "someone-elses-token"])
async def test_a_refresh_without_the_double_submit_is_refused(client: Client, csrf: str) -> None:
    _, jar = await sign_in(client)
    response = await client.post("/auth/refresh", json={}, headers=sent(jar, csrf))
    assert response.status == 403
    assert (await response.json())["code"] == "csrf_failed"
    # The refresh token was not spent by the refused attempt.
    assert (await client.post("/auth/refresh", json={}, headers=sent(jar))).status == 200


async def test_logout_clears_both_cookies(client: Client) -> None:
    body, _ = await sign_in(client)
    response = await client.post(
        "/auth/logout", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert response.status == 204
    cleared = cookies_of(response)
    assert cleared["gateway_refresh"]["max-age"] == "0"
    assert cleared["gateway_csrf"]["max-age"] == "0"


async def test_without_cookie_mode_the_body_carries_the_token(
    gateway: MakeGateway, policies: Path
) -> None:
    client = await gateway(identity_config())
    await make_user(client, "cleo")
    response = await client.post("/auth/login", json={"username": "cleo", "password": PASSWORD})
    assert (await response.json())["refresh_token"]
    assert "Set-Cookie" not in response.headers
    missing = await client.post("/auth/refresh", json={})
    assert missing.status == 400
    assert (await missing.json())["code"] == "invalid_field"
