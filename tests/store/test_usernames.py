"""Usernames are unique regardless of case, found in any case, and never hold control characters.

On SQLite and PostgreSQL: a case variant of a taken name is 409
`username_taken`, sign-in takes the name in any case while the stored name
keeps the case its owner chose, migration 0002 renames existing case
variants deterministically, and a control character in a name (or NUL in
any text the database stores) is a 400 naming the field, never a 500.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from gateway.store.engine import make_engine
from gateway.store.migrate import current_revision, upgrade
from tests.conftest import POSTGRES_URL, MakeGateway, postgres_admin
from tests.identity import PASSWORD, Client, bearer, identity_config, login, make_user


@pytest.fixture
async def client(gateway: MakeGateway, policies: Path, database_url: str) -> Client:
    return await gateway(identity_config(), database_url=database_url)


async def problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    body: dict[str, Any] = await resp.json(content_type=None)
    assert resp.status == status, body
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert body["code"] == code, body
    return body


async def register(client: Client, username: str, **extra: Any) -> Any:
    return await client.post(
        "/auth/register", json={"username": username, "password": PASSWORD, **extra}
    )


# --- one name, any case ------------------------------------------------------------


async def test_a_case_variant_of_a_taken_name_is_409(client: Client, root: dict[str, str]) -> None:
    assert (await register(client, "dev-admin")).status == 201
    taken = await problem(await register(client, "DEV-ADMIN"), 409, "username_taken")
    assert "DEV-ADMIN" in taken["detail"]
    by_admin = {"username": "Dev-Admin", "password": PASSWORD, "role": "user"}
    await problem(
        await client.post("/admin/users", json=by_admin, headers=root), 409, "username_taken"
    )
    names = [
        u["username"]
        for u in (await (await client.get("/admin/users", headers=root)).json())["items"]
    ]
    assert sorted(names) == ["dev-admin", "root"]


async def test_sign_in_takes_any_case_and_the_chosen_case_is_kept(client: Client) -> None:
    assert (await register(client, "Alice.Smith")).status == 201
    for spelling in ("alice.smith", "ALICE.SMITH", "Alice.Smith"):
        tokens = await login(client, spelling)
        me = await client.get("/users/me", headers=bearer(tokens))
        assert (await me.json())["username"] == "Alice.Smith"


# --- control characters: a 400 naming the field, never a 500 ------------------------

CONTROLS = ("\x00", "\n", "\x1b", "\x7f", "\x85")  # NUL, C0, DEL, C1: category Cc


@pytest.mark.parametrize("control", CONTROLS)
async def test_control_characters_at_sign_in_are_400(client: Client, control: str) -> None:
    await make_user(client, "alice")
    attempt = {"username": f"ali{control}ce", "password": PASSWORD}
    body = await problem(await client.post("/auth/login", json=attempt), 400, "invalid_field")
    assert body["detail"].startswith("username: ")


@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize("field", ["username", "display_name", "email"])
async def test_control_characters_at_registration_are_400(
    client: Client, control: str, field: str
) -> None:
    fields = {"username": "zoe", "display_name": "Zoë Ångström", "email": "zoe@example.com"}
    fields[field] = fields[field][:1] + control + fields[field][1:]
    body = await problem(
        await client.post("/auth/register", json={**fields, "password": PASSWORD}),
        400,
        "invalid_field",
    )
    assert body["detail"].startswith(f"{field}: ")
    assert (await register(client, "zoe", display_name="Zoë Ångström")).status == 201


@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize("field", ["username", "display_name", "email"])
async def test_control_characters_in_an_admin_created_user_are_400(
    client: Client, root: dict[str, str], control: str, field: str
) -> None:
    fields = {"username": "zoe", "display_name": "Zoë", "email": "zoe@example.com"}
    fields[field] = fields[field][:1] + control + fields[field][1:]
    body = await problem(
        await client.post(
            "/admin/users", json={**fields, "password": PASSWORD, "role": "user"}, headers=root
        ),
        400,
        "invalid_field",
    )
    assert body["detail"].startswith(f"{field}: ")


@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize("field", ["display_name", "email"])
async def test_control_characters_in_a_profile_change_are_400(
    client: Client, root: dict[str, str], control: str, field: str
) -> None:
    user = await make_user(client, "alice")
    value = {"display_name": "Al" + control + "ice", "email": "al" + control + "ice@example.com"}
    change = {field: value[field]}
    by_admin = await client.patch(f"/admin/users/{user.id}", json=change, headers=root)
    assert (await problem(by_admin, 400, "invalid_field"))["detail"].startswith(f"{field}: ")
    own = bearer(await login(client, "alice"))
    by_self = await client.patch("/users/me", json=change, headers=own)
    assert (await problem(by_self, 400, "invalid_field"))["detail"].startswith(f"{field}: ")
    me = await (await client.get("/users/me", headers=own)).json()
    assert (me["display_name"], me["email"]) == (None, None)  # nothing was stored


# --- migration 0002 on a database with case variants ---------------------------------

USERS = sa.table(
    "users",
    sa.column("id", sa.String),
    sa.column("username", sa.String),
    sa.column("password_hash", sa.String),
    sa.column("role", sa.String),
    sa.column("active", sa.Boolean),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)
T0 = datetime(2025, 1, 1, tzinfo=UTC)
LONG = "x" * 64

# (id, username, created minutes after T0), inserted in this order: not oldest first.
ROWS = [
    ("a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6", "DEV-ADMIN", 30),
    ("c0ffee00000000000000000000000001", "dev-admin", 10),  # the oldest: keeps its name
    ("f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4", "Dev-Admin", 20),
    ("0badcafe000000000000000000000000", "dev-admin-a1b2c3d4", 5),  # the first rename's name
    ("12345678900000000000000000000000", LONG, 1),
    ("98765432100000000000000000000000", LONG.upper(), 2),
    ("77777777777777777777777777777777", "bob", 3),
]


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema yet: SQLite, and PostgreSQL when it is configured."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("GATEWAY_TEST_POSTGRES_URL is not set (CI sets it): PostgreSQL variant skipped")
    name = f"gw_test_nocase_{uuid.uuid4().hex[:8]}"
    postgres_admin(POSTGRES_URL, f'CREATE DATABASE "{name}"')
    yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    postgres_admin(POSTGRES_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_migration_renames_case_variants_keeping_the_oldest(empty_database: str) -> None:
    await upgrade(empty_database, "0001")
    engine = make_engine(empty_database)
    try:
        async with engine.begin() as connection:
            for user_id, name, minutes in ROWS:
                moment = T0 + timedelta(minutes=minutes)
                await connection.execute(
                    USERS.insert().values(
                        id=user_id,
                        username=name,
                        password_hash="!",
                        role="user",
                        active=True,
                        created_at=moment,
                        updated_at=moment,
                    )
                )
        await upgrade(empty_database, "0002")
        assert await current_revision(engine) == "0002"
        async with engine.connect() as connection:
            rows = await connection.execute(sa.select(USERS.c.id, USERS.c.username))
            names = {row.id: row.username for row in rows}
        assert names == {
            "c0ffee00000000000000000000000001": "dev-admin",
            "0badcafe000000000000000000000000": "dev-admin-a1b2c3d4",
            # its 8-character name is taken (case aside) by the row above: 9 characters
            "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6": "DEV-ADMIN-a1b2c3d4e",
            "f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4": "Dev-Admin-f9e8d7c6",
            "12345678900000000000000000000000": LONG,
            "98765432100000000000000000000000": "X" * 55 + "-98765432",  # still 64 characters
            "77777777777777777777777777777777": "bob",
        }
        # From now on the database itself refuses a case variant.
        with pytest.raises(IntegrityError):
            async with engine.begin() as connection:
                await connection.execute(
                    USERS.insert().values(
                        id=uuid.uuid4().hex,
                        username="BOB",
                        password_hash="!",
                        role="user",
                        active=True,
                        created_at=T0,
                        updated_at=T0,
                    )
                )
    finally:
        await engine.dispose()
