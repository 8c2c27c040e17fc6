"""/users/me and /users/me/password through the real chain, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MakeGateway
from tests.identity import PASSWORD, Client, bearer, identity_config, login, make_user

NEW_PASSWORD = "a brand new passphrase of mine"


@pytest.fixture
async def client(gateway: MakeGateway, policies: Path, database_url: str) -> Client:
    return await gateway(identity_config(), database_url=database_url)


async def problem(resp: Any, status: int) -> dict[str, Any]:
    """The problem body of `resp`, after checking its status and media type."""
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = await resp.json()
    assert body["status"] == status
    return body


async def test_get_shows_the_profile_and_never_the_password(client: Client) -> None:
    user = await make_user(client, "alice", "analyst")
    resp = await client.get("/users/me", headers=bearer(await login(client, "alice")))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    text = await resp.text()
    me = await resp.json()
    assert me["id"] == user.id
    assert isinstance(me["id"], str)
    assert me["username"] == "alice"
    assert me["role"] == "analyst"
    assert me["active"] is True
    assert me["created_at"].endswith("Z")
    assert me["display_name"] is None
    assert me["email"] is None
    assert "password" not in text
    assert "hash" not in text
    assert "argon2" not in text


async def test_trailing_slash_reaches_the_same_profile(client: Client) -> None:
    await make_user(client, "alice")
    resp = await client.get("/users/me/", headers=bearer(await login(client, "alice")))
    assert resp.status == 200
    assert (await resp.json())["username"] == "alice"


async def test_patch_changes_display_name_and_email(client: Client) -> None:
    await make_user(client, "bob")
    headers = bearer(await login(client, "bob"))
    resp = await client.patch(
        "/users/me", json={"display_name": "Bob B.", "email": "bob@example.org"}, headers=headers
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["display_name"] == "Bob B."
    assert body["email"] == "bob@example.org"
    assert body["updated_at"] >= body["created_at"]
    me = await (await client.get("/users/me", headers=headers)).json()
    assert (me["display_name"], me["email"]) == ("Bob B.", "bob@example.org")

    # only what was sent changes; null clears an optional field
    resp = await client.patch("/users/me", json={"email": None}, headers=headers)
    assert resp.status == 200
    body = await resp.json()
    assert body["email"] is None
    assert body["display_name"] == "Bob B."


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"nickname": "b"}, "nickname", "unknown field"),
        ({"role": "admin"}, "role", "unknown field"),  # no self-promotion
        ({"password": "x" * 20}, "password", "unknown field"),
        ({"display_name": 42}, "display_name", "must be a string"),
        ({"email": ["a@b.c"]}, "email", "must be a string"),
        ({"email": "not-an-email"}, "email", "must match"),
        ({"email": "two words@example.org"}, "email", "must match"),
        ({"display_name": "d" * 129}, "display_name", "at most 128"),
        ({"email": "e" * 250 + "@x.io"}, "email", "at most 254"),
    ],
)
async def test_patch_refuses_bad_fields_by_name(
    client: Client, body: dict[str, Any], field: str, says: str
) -> None:
    await make_user(client, "carol")
    headers = bearer(await login(client, "carol"))
    resp = await client.patch("/users/me", json=body, headers=headers)
    error = await problem(resp, 400)
    assert error["code"] == "invalid_field"
    assert error["detail"].startswith(f"{field}: ")
    assert says in error["detail"]
    me = await (await client.get("/users/me", headers=headers)).json()
    assert me["role"] == "user"  # nothing changed
    assert me["display_name"] is None


async def test_patch_needs_a_json_object(client: Client) -> None:
    await make_user(client, "carol")
    headers = bearer(await login(client, "carol"))
    resp = await client.patch("/users/me", json=["display_name"], headers=headers)
    assert (await problem(resp, 400))["code"] == "invalid_body"
    resp = await client.patch(
        "/users/me", data=b"{", headers={**headers, "Content-Type": "application/json"}
    )
    assert (await problem(resp, 400))["code"] == "malformed_json"
    resp = await client.patch(
        "/users/me", data=b"display_name=x", headers={**headers, "Content-Type": "text/plain"}
    )
    assert (await problem(resp, 415))["code"] == "unsupported_media_type"


async def test_wrong_current_password_is_400(client: Client) -> None:
    await make_user(client, "dave")
    headers = bearer(await login(client, "dave"))
    resp = await client.post(
        "/users/me/password",
        json={"current_password": "not my password", "new_password": NEW_PASSWORD},
        headers=headers,
    )
    error = await problem(resp, 400)
    assert error["code"] == "wrong_password"
    assert "current_password" in error["detail"]
    await login(client, "dave")  # unchanged
    assert (await client.get("/users/me", headers=headers)).status == 200  # session kept


async def test_guessing_the_current_password_is_throttled(
    gateway: MakeGateway, policies: Path, database_url: str
) -> None:
    client = await gateway(
        identity_config(auth_extra="login_failures: 3/15m"), database_url=database_url
    )
    await make_user(client, "dora")
    headers = bearer(await login(client, "dora"))
    for guess in ("guess number one", "guess number two", "guess number three"):
        resp = await client.post(
            "/users/me/password",
            json={"current_password": guess, "new_password": NEW_PASSWORD},
            headers=headers,
        )
        assert (await problem(resp, 400))["code"] == "wrong_password"
    # even the right one waits now: the guesses count as failed sign-ins
    resp = await client.post(
        "/users/me/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=headers,
    )
    assert (await problem(resp, 429))["code"] == "login_throttled"
    assert int(resp.headers["Retry-After"]) > 0
    blocked = await client.post("/auth/login", json={"username": "dora", "password": PASSWORD})
    assert blocked.status == 429


@pytest.mark.parametrize(
    ("new_password", "rule"),
    [
        ("short", "at least 12 characters"),
        ("x" * 1025, "at most 1024 characters"),
        ("aaaaaaaaaaaaaaaa", "single character repeated"),
        ("ErinTheUser1", "same as the username"),
    ],
)
async def test_weak_new_password_names_the_rule(
    client: Client, new_password: str, rule: str
) -> None:
    await make_user(client, "erintheuser1")
    headers = bearer(await login(client, "erintheuser1"))
    resp = await client.post(
        "/users/me/password",
        json={"current_password": PASSWORD, "new_password": new_password},
        headers=headers,
    )
    error = await problem(resp, 400)
    if len(new_password) > 1024:  # the shape bound speaks before the policy
        assert error["code"] == "invalid_field"
        assert error["detail"].startswith("new_password: ")
        assert "at most 1024" in error["detail"]
    else:
        assert error["code"] == "weak_password"
        assert rule in error["detail"]
    await login(client, "erintheuser1")  # the old password still works


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"new_password": NEW_PASSWORD}, "current_password"),
        ({"current_password": PASSWORD}, "new_password"),
        ({"current_password": PASSWORD, "new_password": 12345678901234}, "new_password"),
        ({"current_password": PASSWORD, "new_password": NEW_PASSWORD, "x": 1}, "x"),
    ],
)
async def test_password_change_body_is_validated(
    client: Client, body: dict[str, Any], field: str
) -> None:
    await make_user(client, "fay")
    headers = bearer(await login(client, "fay"))
    resp = await client.post("/users/me/password", json=body, headers=headers)
    error = await problem(resp, 400)
    assert error["code"] == "invalid_field"
    assert error["detail"].startswith(f"{field}: ")


async def test_password_change_ends_every_session(client: Client) -> None:
    await make_user(client, "gus")
    await make_user(client, "bystander")
    first = await login(client, "gus")
    second = await login(client, "gus")  # another device
    refreshed = await client.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert refreshed.status == 200
    third = await refreshed.json()  # a rotated pair of that device's family
    other = await login(client, "bystander")

    resp = await client.post(
        "/users/me/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer(first),
    )
    assert resp.status == 204, await resp.text()
    assert await resp.read() == b""

    old = await client.post("/auth/login", json={"username": "gus", "password": PASSWORD})
    assert (await problem(old, 401))["code"] == "invalid_credentials"
    fresh = await login(client, "gus", NEW_PASSWORD)
    assert (await client.get("/users/me", headers=bearer(fresh))).status == 200

    for tokens in (first, third):
        me = await client.get("/users/me", headers=bearer(tokens))
        error = await problem(me, 401)
        assert error["code"] == "token_revoked"
        assert 'error="invalid_token"' in me.headers["WWW-Authenticate"]
    for tokens in (first, second, third):
        again = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert again.status == 401
    # another user's session is untouched
    assert (await client.get("/users/me", headers=bearer(other))).status == 200


async def test_without_a_token_is_401_with_the_bare_challenge(client: Client) -> None:
    for method, path in (
        ("GET", "/users/me"),
        ("PATCH", "/users/me"),
        ("POST", "/users/me/password"),
    ):
        resp = await client.request(method, path, json={})
        error = await problem(resp, 401)
        assert error["code"] == "missing_token"
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'


async def test_wrong_methods_are_405_with_allow(client: Client) -> None:
    await make_user(client, "hal")
    headers = bearer(await login(client, "hal"))
    resp = await client.delete("/users/me", headers=headers)
    error = await problem(resp, 405)
    assert error["code"] == "method_not_allowed"
    assert resp.headers["Allow"] == "GET, HEAD, PATCH"
    resp = await client.get("/users/me/password", headers=headers)
    await problem(resp, 405)
    assert resp.headers["Allow"] == "POST"
    assert (await client.get("/users/me", headers=headers)).status == 200  # still there


async def test_accept_without_json_is_406(client: Client) -> None:
    await make_user(client, "ivo")
    headers = bearer(await login(client, "ivo"))
    resp = await client.get("/users/me", headers={**headers, "Accept": "text/html"})
    assert (await problem(resp, 406))["code"] == "not_acceptable"
    resp = await client.get("/users/me", headers={**headers, "Accept": "text/html, */*;q=0.1"})
    assert resp.status == 200


async def test_unknown_path_under_users_me_is_404(client: Client) -> None:
    await make_user(client, "ida")
    resp = await client.get("/users/me/settings", headers=bearer(await login(client, "ida")))
    assert (await problem(resp, 404))["code"] == "no_route"
