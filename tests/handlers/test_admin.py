"""/admin/*: user management, the last-admin guard, the route table and the loaded config.

Through the real chain, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from gateway.problems import GatewayError
from gateway.services import SERVICES
from gateway.store.users import decode_cursor, encode_cursor
from tests.conftest import MakeGateway
from tests.identity import PASSWORD, Client, bearer, identity_config, login, make_user

NEW_PASSWORD = "another fine passphrase"


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


async def create(client: Client, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = {"password": PASSWORD, "role": "user", **fields}
    resp = await client.post("/admin/users", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    user: dict[str, Any] = await resp.json()
    return user


# --- who may ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/users"),
        ("POST", "/admin/users"),
        ("GET", "/admin/users/x"),
        ("PATCH", "/admin/users/x"),
        ("DELETE", "/admin/users/x"),
        ("GET", "/admin/routes"),
        ("GET", "/admin/config"),
    ],
)
async def test_admin_api_needs_an_admin(client: Client, method: str, path: str) -> None:
    await make_user(client, "analyst", "analyst")
    headers = bearer(await login(client, "analyst"))
    resp = await client.request(method, path, json={}, headers=headers)
    error = await problem(resp, 403)
    assert error["code"] == "role_forbidden"
    assert "WWW-Authenticate" not in resp.headers

    resp = await client.request(method, path, json={})
    assert (await problem(resp, 401))["code"] == "missing_token"
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'


# --- create -------------------------------------------------------------------


async def test_create_answers_the_user(client: Client, root: dict[str, str]) -> None:
    resp = await client.post(
        "/admin/users",
        json={
            "username": "nina",
            "password": PASSWORD,
            "role": "analyst",
            "display_name": "Nina",
            "email": "nina@example.org",
        },
        headers=root,
    )
    assert resp.status == 201, await resp.text()
    text = await resp.text()
    user = await resp.json()
    assert isinstance(user["id"], str)
    assert user["username"] == "nina"
    assert user["role"] == "analyst"
    assert user["active"] is True
    assert user["display_name"] == "Nina"
    assert user["email"] == "nina@example.org"
    datetime.fromisoformat(user["created_at"])
    assert "password" not in text
    assert "hash" not in text
    # the new user signs in and has the role given
    tokens = await login(client, "nina")
    me = await (await client.get("/users/me", headers=bearer(tokens))).json()
    assert me["id"] == user["id"]
    assert me["role"] == "analyst"


async def test_create_inactive_user_cannot_sign_in(client: Client, root: dict[str, str]) -> None:
    user = await create(client, root, username="otto", active=False)
    assert user["active"] is False
    resp = await client.post("/auth/login", json={"username": "otto", "password": PASSWORD})
    assert (await problem(resp, 401))["code"] == "invalid_credentials"


async def test_duplicate_username_is_409(client: Client, root: dict[str, str]) -> None:
    await create(client, root, username="pia")
    resp = await client.post(
        "/admin/users", json={"username": "pia", "password": PASSWORD, "role": "user"}, headers=root
    )
    error = await problem(resp, 409)
    assert error["code"] == "username_taken"
    assert "pia" in error["detail"]


@pytest.mark.parametrize(
    ("body", "field", "code", "says"),
    [
        ({"role": "superuser"}, "role", "invalid_field", "unknown role 'superuser'"),
        ({"role": ""}, "role", "invalid_field", "at least 1"),
        ({"role": None}, "role", "invalid_field", "may not be null"),
        ({"username": "ab"}, "username", "invalid_field", "at least 3"),
        ({"username": "-dash"}, "username", "invalid_field", "must match"),
        ({"username": "u" * 65}, "username", "invalid_field", "at most 64"),
        ({"active": "yes"}, "active", "invalid_field", "true or false"),
        ({"email": "nope"}, "email", "invalid_field", "must match"),
        ({"is_admin": True}, "is_admin", "invalid_field", "unknown field"),
        ({"password": "short"}, None, "weak_password", "at least 12 characters"),
        ({"password": "quentin"}, None, "weak_password", "at least 12 characters"),
        ({"password": "zzzzzzzzzzzzzz"}, None, "weak_password", "single character"),
    ],
)
async def test_create_validates(
    client: Client,
    root: dict[str, str],
    body: dict[str, Any],
    field: str | None,
    code: str,
    says: str,
) -> None:
    full = {"username": "quentin", "password": PASSWORD, "role": "user", **body}
    resp = await client.post("/admin/users", json=full, headers=root)
    error = await problem(resp, 400)
    assert error["code"] == code
    if field is not None:
        assert error["detail"].startswith(f"{field}: ")
    assert says in error["detail"]
    if field == "role" and "unknown" in says:
        assert "admin, analyst, user" in error["detail"]  # the roles one may use
    listed = await (await client.get("/admin/users", headers=root)).json()
    assert [u["username"] for u in listed["items"]] == ["root"]  # nothing was created


@pytest.mark.parametrize("missing", ["username", "password", "role"])
async def test_create_names_a_missing_field(
    client: Client, root: dict[str, str], missing: str
) -> None:
    body = {"username": "rita", "password": PASSWORD, "role": "user"}
    del body[missing]
    resp = await client.post("/admin/users", json=body, headers=root)
    error = await problem(resp, 400)
    assert error["code"] == "invalid_field"
    assert error["detail"] == f"{missing}: is required"


# --- list ---------------------------------------------------------------------


async def test_list_pages_through_every_user_once_in_created_order(
    client: Client, root: dict[str, str]
) -> None:
    made = ["root"]
    for i in range(8):
        made.append((await create(client, root, username=f"member{i}"))["username"])
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {"limit": "3"} | ({"cursor": cursor} if cursor else {})
        resp = await client.get("/admin/users", params=query, headers=root)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        assert set(page) == {"items", "next_cursor"}
        assert 1 <= len(page["items"]) <= 3
        seen += [u["username"] for u in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
        assert pages < 10
    # 9 users: three full pages, and the third says there is no more (no empty fourth)
    assert pages == 3
    assert seen == made

    everything = await (await client.get("/admin/users", headers=root)).json()
    assert [u["username"] for u in everything["items"]] == made  # default limit 50
    assert everything["next_cursor"] is None
    assert all("password_hash" not in u for u in everything["items"])


@pytest.mark.parametrize(
    "limit", ["0", "501", "-1", "abc", "1.5", "3 ", "3_0", "+3", "\u0663", "9" * 30]
)
async def test_list_refuses_a_bad_limit(client: Client, root: dict[str, str], limit: str) -> None:
    resp = await client.get("/admin/users", params={"limit": limit}, headers=root)
    error = await problem(resp, 400)
    assert error["code"] == "invalid_query"
    assert error["detail"].startswith("limit: ")


async def test_list_accepts_the_limit_bounds(client: Client, root: dict[str, str]) -> None:
    for limit in ("1", "500"):
        resp = await client.get("/admin/users", params={"limit": limit}, headers=root)
        assert resp.status == 200
        assert len((await resp.json())["items"]) == 1


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!!",
        "x",
        "é",
        encode_cursor(["2024-01-01T00:00:00+00:00"]),  # wrong arity
        encode_cursor({"a": 1}),  # type: ignore[arg-type]
        encode_cursor(["not a time", "abc"]),
        encode_cursor([12, "abc"]),
        encode_cursor(["2024-01-01T00:00:00+00:00", 7]),
        encode_cursor([None, None]),
    ],
)
async def test_list_refuses_a_cursor_it_did_not_give(
    client: Client, root: dict[str, str], cursor: str
) -> None:
    resp = await client.get("/admin/users", params={"cursor": cursor}, headers=root)
    error = await problem(resp, 400)
    assert error["code"] == "bad_cursor"
    assert "cursor" in error["detail"]


async def test_a_cursor_means_the_same_moment_in_any_offset(
    client: Client, root: dict[str, str]
) -> None:
    for i in range(3):
        await create(client, root, username=f"zed{i}")
    first = await (await client.get("/admin/users?limit=2", headers=root)).json()
    created, last_id = decode_cursor(first["next_cursor"], 2)
    moment = datetime.fromisoformat(created)
    if moment.tzinfo is None:  # SQLite's cursor carries UTC wall time
        moment = moment.replace(tzinfo=UTC)
    shifted = moment.astimezone(timezone(timedelta(hours=2))).isoformat()
    expected = ["zed1", "zed2"]
    for cursor in (first["next_cursor"], encode_cursor([shifted, last_id])):
        resp = await client.get("/admin/users", params={"cursor": cursor}, headers=root)
        assert resp.status == 200, await resp.text()
        assert [u["username"] for u in (await resp.json())["items"]] == expected


async def test_list_filters_by_role_and_active(client: Client, root: dict[str, str]) -> None:
    await create(client, root, username="ann", role="analyst")
    await create(client, root, username="abe", role="analyst", active=False)
    await create(client, root, username="uma")
    await create(client, root, username="ula", active=False)

    async def names(**query: str) -> list[str]:
        resp = await client.get("/admin/users", params=query, headers=root)
        assert resp.status == 200, await resp.text()
        return [u["username"] for u in (await resp.json())["items"]]

    assert await names(role="analyst") == ["ann", "abe"]
    assert await names(role="admin") == ["root"]
    assert await names(role="nobody") == []
    assert await names(active="false") == ["abe", "ula"]
    assert await names(active="true") == ["root", "ann", "uma"]
    assert await names(role="analyst", active="true") == ["ann"]
    assert await names(role="user", active="0", limit="1") == ["ula"]
    # a filter holds across pages too
    first = await (
        await client.get("/admin/users", params={"active": "true", "limit": "2"}, headers=root)
    ).json()
    assert [u["username"] for u in first["items"]] == ["root", "ann"]
    rest = await names(active="true", limit="2", cursor=first["next_cursor"])
    assert rest == ["uma"]

    resp = await client.get("/admin/users", params={"active": "maybe"}, headers=root)
    error = await problem(resp, 400)
    assert error["detail"].startswith("active: ")


# --- one user -----------------------------------------------------------------


async def test_get_one_and_unknown_ids(client: Client, root: dict[str, str]) -> None:
    user = await create(client, root, username="sam")
    resp = await client.get(f"/admin/users/{user['id']}", headers=root)
    assert resp.status == 200
    assert await resp.json() == user
    for unknown in ("0" * 32, "nope", "x" * 100, "%E2%98%83"):
        for method in ("GET", "PATCH", "DELETE"):
            resp = await client.request(
                method, f"/admin/users/{unknown}", json={"display_name": "x"}, headers=root
            )
            error = await problem(resp, 404)
            assert error["code"] == "user_not_found"


async def test_patch_role_active_display_name_and_password(
    client: Client, root: dict[str, str]
) -> None:
    user = await create(client, root, username="tim")
    url = f"/admin/users/{user['id']}"
    tim = bearer(await login(client, "tim"))

    resp = await client.patch(url, json={"role": "analyst", "display_name": "Tim"}, headers=root)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["role"], body["display_name"], body["active"]) == ("analyst", "Tim", True)
    assert (await client.get("/users/me", headers=tim)).status == 200
    assert (await (await client.get("/users/me", headers=tim)).json())["role"] == "analyst"

    resp = await client.patch(url, json={"password": NEW_PASSWORD}, headers=root)
    assert resp.status == 200
    assert "password" not in await resp.text()
    old = await client.post("/auth/login", json={"username": "tim", "password": PASSWORD})
    assert old.status == 401
    await login(client, "tim", NEW_PASSWORD)

    resp = await client.patch(url, json={"active": False}, headers=root)
    assert resp.status == 200
    assert (await resp.json())["active"] is False
    assert (await problem(await client.get("/users/me", headers=tim), 401))[
        "code"
    ] == "user_inactive"
    resp = await client.post("/auth/login", json={"username": "tim", "password": NEW_PASSWORD})
    assert resp.status == 401

    resp = await client.patch(url, json={"active": True}, headers=root)
    assert resp.status == 200
    await login(client, "tim", NEW_PASSWORD)

    stored = await (await client.get(url, headers=root)).json()
    assert stored["role"] == "analyst"
    assert stored["display_name"] == "Tim"
    assert stored["active"] is True


@pytest.mark.parametrize(
    ("body", "field", "code", "says"),
    [
        ({"role": None}, "role", "invalid_field", "may not be null"),
        ({"active": None}, "active", "invalid_field", "may not be null"),
        ({"password": None}, "password", "invalid_field", "may not be null"),
        ({"role": "wizard"}, "role", "invalid_field", "unknown role"),
        ({"active": 1}, "active", "invalid_field", "true or false"),
        ({"username": "renamed"}, "username", "invalid_field", "unknown field"),
        ({"display_name": "d" * 129}, "display_name", "invalid_field", "at most 128"),
        ({"password": "tiny"}, None, "weak_password", "at least 12"),
        ({"password": "victor"}, None, "weak_password", "at least 12"),
    ],
)
async def test_patch_validates(
    client: Client,
    root: dict[str, str],
    body: dict[str, Any],
    field: str | None,
    code: str,
    says: str,
) -> None:
    user = await create(client, root, username="victor")
    resp = await client.patch(f"/admin/users/{user['id']}", json=body, headers=root)
    error = await problem(resp, 400)
    assert error["code"] == code
    if field is not None:
        assert error["detail"].startswith(f"{field}: ")
    assert says in error["detail"]
    after = await (await client.get(f"/admin/users/{user['id']}", headers=root)).json()
    assert after == user  # nothing changed
    await login(client, "victor")


async def test_delete_deactivates_and_anonymises(client: Client, root: dict[str, str]) -> None:
    user = await create(client, root, username="uri", email="uri@example.org")
    url = f"/admin/users/{user['id']}"
    tokens = await login(client, "uri")

    resp = await client.delete(url, headers=root)
    assert resp.status == 204
    assert await resp.read() == b""

    assert (await problem(await client.get(url, headers=root), 404))["code"] == "user_not_found"
    assert (await problem(await client.delete(url, headers=root), 404))["code"] == "user_not_found"
    assert (await problem(await client.patch(url, json={}, headers=root), 404))[
        "code"
    ] == "user_not_found"
    gone = await client.get("/users/me", headers=bearer(tokens))
    assert (await problem(gone, 401))["code"] == "user_inactive"
    refresh = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refresh.status == 401
    resp = await client.post("/auth/login", json={"username": "uri", "password": PASSWORD})
    assert (await problem(resp, 401))["code"] == "invalid_credentials"
    listed = await (await client.get("/admin/users", headers=root)).json()
    assert [u["username"] for u in listed["items"]] == ["root"]
    assert await (await client.get("/admin/users?active=false", headers=root)).json() == {
        "items": [],
        "next_cursor": None,
    }

    # README "Identity": deleting is deactivation plus anonymising. The row
    # stays (for the audit trail) under a placeholder name, with no password
    # and no personal data, so the old username is free for someone new.
    stored = await client.app[SERVICES].users.by_username(f"deleted-{user['id'][:12]}")
    assert stored is not None
    assert stored.id == user["id"]
    assert stored.active is False
    assert (stored.email, stored.display_name) == (None, None)
    assert await client.app[SERVICES].users.by_username("uri") is None
    again = await create(client, root, username="uri")
    assert again["id"] != user["id"]
    await login(client, "uri")


# --- the last active admin ----------------------------------------------------


async def test_the_only_active_admin_cannot_be_removed(
    client: Client, root: dict[str, str]
) -> None:
    me = await (await client.get("/users/me", headers=root)).json()
    url = f"/admin/users/{me['id']}"
    # an inactive admin does not count as another one
    await create(client, root, username="sleeper", role="admin", active=False)
    for method, body in (
        ("PATCH", {"role": "analyst"}),
        ("PATCH", {"active": False}),
        ("PATCH", {"role": "user", "active": False}),
        ("DELETE", None),
    ):
        resp = await client.request(method, url, json=body, headers=root)
        error = await problem(resp, 409)
        assert error["code"] == "last_admin"
    # harmless changes to the last admin still pass
    resp = await client.patch(url, json={"role": "admin", "display_name": "Root"}, headers=root)
    assert resp.status == 200, await resp.text()
    after = await (await client.get(url, headers=root)).json()
    assert (after["role"], after["active"]) == ("admin", True)


async def test_with_two_admins_one_can_go(client: Client, root: dict[str, str]) -> None:
    me = await (await client.get("/users/me", headers=root)).json()
    other = await create(client, root, username="deputy", role="admin")
    deputy = bearer(await login(client, "deputy"))

    resp = await client.patch(f"/admin/users/{me['id']}", json={"role": "user"}, headers=deputy)
    assert resp.status == 200, await resp.text()
    # root's role change holds at its next request
    assert (await problem(await client.get("/admin/users", headers=root), 403))[
        "code"
    ] == "role_forbidden"
    # and now deputy is the last one
    resp = await client.delete(f"/admin/users/{other['id']}", headers=deputy)
    assert (await problem(resp, 409))["code"] == "last_admin"
    resp = await client.patch(f"/admin/users/{me['id']}", json={"role": "admin"}, headers=deputy)
    assert resp.status == 200
    resp = await client.delete(f"/admin/users/{other['id']}", headers=root)
    assert resp.status == 204


async def active_admins(client: Client) -> list[str]:
    items, _ = await client.app[SERVICES].users.page(500, None, role="admin", active=True)
    return [u.username for u in items]


async def test_two_admins_demoting_each_other_at_once_leave_one(client: Client) -> None:
    a = await make_user(client, "admin-a", "admin")
    b = await make_user(client, "admin-b", "admin")
    a_headers = bearer(await login(client, "admin-a"))
    b_headers = bearer(await login(client, "admin-b"))

    results = await asyncio.gather(
        client.patch(f"/admin/users/{b.id}", json={"role": "user"}, headers=a_headers),
        client.patch(f"/admin/users/{a.id}", json={"role": "user"}, headers=b_headers),
    )
    statuses = sorted(r.status for r in results)
    # One wins; the other meets the guard (409), or, had it been slower, its
    # own new role (403) at the policy stage. Never both.
    assert statuses in ([200, 409], [200, 403]), statuses
    for resp in results:
        if resp.status == 409:
            assert (await resp.json())["code"] == "last_admin"
    assert len(await active_admins(client)) == 1


@pytest.mark.parametrize("change", [{"role": "user"}, {"active": False}, "delete"])
async def test_concurrent_removals_in_the_store_never_leave_no_admin(
    client: Client, change: dict[str, Any] | str
) -> None:
    """The guard itself, without the HTTP layer's timing: several rounds of a true race."""
    users = client.app[SERVICES].users

    async def remove(user_id: str) -> object:
        if isinstance(change, dict):
            return await users.update(user_id, **change)
        return await users.delete(user_id)

    survivor: str | None = None
    for round_ in range(5):
        a = await make_user(client, f"a{round_}", "admin")
        b = await make_user(client, f"b{round_}", "admin")
        if survivor is not None:  # the last round's survivor steps aside: a and b remain
            await users.update(survivor, role="user")
        outcomes = await asyncio.gather(remove(a.id), remove(b.id), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(errors) == 1, outcomes
        assert isinstance(errors[0], GatewayError), errors[0]
        assert errors[0].code == "last_admin"
        survivors = await active_admins(client)
        assert len(survivors) == 1
        assert survivors[0] in (f"a{round_}", f"b{round_}")
        survivor = a.id if survivors[0] == a.username else b.id


# --- the route table and the loaded config -------------------------------------


async def test_routes_lists_the_live_table(client: Client, root: dict[str, str]) -> None:
    resp = await client.get("/admin/routes", headers=root)
    assert resp.status == 200
    body = await resp.json()
    assert body["next_cursor"] is None
    items = body["items"]
    assert [r["path"] for r in items] == [
        "/auth/register",
        "/auth/login",
        "/auth/refresh",
        "/auth/logout",
        "/users/me/**",
        "/admin/**",
    ]
    assert [r["index"] for r in items] == list(range(len(items)))
    login_route = items[1]
    assert login_route["methods"] == ["POST"]
    assert login_route["handler"] == "auth.login"
    assert login_route["auth"] == "none"
    assert login_route["upstream"] is None
    admin_route = items[5]
    assert admin_route["handler"] == "admin"
    assert admin_route["roles"] == ["admin"]
    assert admin_route["methods"] is None
    assert admin_route["auth"] != "none"


async def test_config_says_what_is_loaded(client: Client, root: dict[str, str]) -> None:
    resp = await client.get("/admin/config", headers=root)
    assert resp.status == 200
    body = await resp.json()
    assert body["version"] == 1
    loaded = datetime.fromisoformat(body["loaded_at"])
    assert loaded.tzinfo is not None
    assert re.fullmatch(r"[0-9a-f]{64}", body["file_hash"])
    assert body["last_error"] is None
    assert body["file"].endswith("routes.yaml")
    assert "secret" not in (await resp.text()).lower()


async def test_names_of_deleted_users_are_reserved(client: Client, root: dict[str, str]) -> None:
    resp = await client.post(
        "/admin/users",
        json={"username": "deleted-abc", "password": PASSWORD, "role": "user"},
        headers=root,
    )
    body = await problem(resp, 400)
    assert "reserved" in body["detail"]
    resp = await client.post("/auth/register", json={"username": "Deleted-x", "password": PASSWORD})
    await problem(resp, 400)


async def test_an_admin_password_reset_ends_every_session(
    client: Client, root: dict[str, str]
) -> None:
    user = await make_user(client, "rita")
    tokens = await login(client, "rita")
    resp = await client.patch(
        f"/admin/users/{user.id}", json={"password": "a brand new password"}, headers=root
    )
    assert resp.status == 200
    assert (await client.get("/users/me", headers=bearer(tokens))).status == 401
    refresh = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refresh.status == 401
    await login(client, "rita", "a brand new password")
