"""seed_data.py and test_connection.py: as scripts in a subprocess, and through their functions."""

from __future__ import annotations

import asyncio
import json
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from argon2 import PasswordHasher
from sqlalchemy import func, select

import seed_data
import test_connection
from gateway.config import load_config
from gateway.demo import launch
from gateway.demo.credentials import UNKNOWN_DATABASE, save
from gateway.services import ServiceSettings
from gateway.store.connection_errors import masked_url
from gateway.store.engine import make_engine, make_sessions
from models import AuditLog, ReportLog, User
from tests.cli.test_cli_identity import HEAD, REPO, run_python
from tests.conftest import MakeGateway, WriteConfig
from tests.identity import bearer, identity_config, login
from tests.processes import free_port

SEED = str(REPO / "seed_data.py")
REFUSED = "connection refused"
CHECK = str(REPO / "test_connection.py")
# A config with a demo model that role user may call, as the shipped one.
WITH_DEMO = identity_config() + "models:\n  demo: {url: http://127.0.0.1:9, roles: [user]}\n"
CREDENTIAL_LINE = re.compile(r"^(?P<user>dev-\S+) / (?P<password>\S{16,}) / (?P<role>\S+)$")
LINE = re.compile(
    r"^(?P<status>ok  |FAIL) (?P<kind>\S+) +(?P<subject>.+?)  (?P<ms>\d+\.\d) ms ?(?P<detail>.*)$"
)


async def database_counts(url: str) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        async with make_sessions(engine)() as session:

            async def count(*where: Any, model: Any = None) -> int:
                query = select(func.count()).select_from(model)
                return int(await session.scalar(query.where(*where)) or 0)

            hashes = dict((await session.execute(select(User.username, User.password_hash))).all())
            statuses = set((await session.scalars(select(AuditLog.status))).all())
            audit_marks = set(
                (await session.execute(select(AuditLog.request_id, AuditLog.client_ip))).all()
            )
            report_ids = set((await session.scalars(select(ReportLog.request_id))).all())
            return {
                "users": await count(model=User),
                "audit": await count(model=AuditLog),
                "reports": await count(model=ReportLog),
                "unknown_usage": await count(ReportLog.total_tokens.is_(None), model=ReportLog),
                "hashes": hashes,
                "statuses": statuses,
                "audit_marks": audit_marks,
                "report_ids": report_ids,
            }
    finally:
        await engine.dispose()


# --- seed_data.py ---------------------------------------------------------------------------


async def test_seed_fills_an_empty_database_once_with_marked_samples(
    tmp_path: Path, write_config: WriteConfig, policies: Path, database_url: str
) -> None:
    config = write_config(identity_config())
    if database_url.startswith("sqlite"):
        # No database at all: the default file beside routes.yaml is made and migrated.
        (tmp_path / "gateway.db").unlink()
        env = {}
    else:
        env = {"GATEWAY_DATABASE_URL": database_url}
    credentials = tmp_path / ".dev-credentials.json"

    first = await asyncio.to_thread(
        run_python, SEED, "--config", str(config), "--samples", env=env, cwd=tmp_path
    )

    assert first.returncode == 0, first.stderr
    assert "$argon2" not in first.stdout + first.stderr
    assert "not shown again" not in first.stdout  # make run's banner shows one again
    printed = {
        m["user"]: {"password": m["password"], "role": m["role"]}
        for m in map(CREDENTIAL_LINE.match, first.stdout.splitlines())
        if m
    }
    assert {name: entry["role"] for name, entry in printed.items()} == {
        "dev-admin": "admin",
        "dev-analyst": "analyst",
        "dev-user": "user",
    }
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert json.loads(credentials.read_text()) == {"databases": {masked_url(database_url): printed}}
    saved = printed
    counts = await database_counts(database_url)
    assert (counts["users"], counts["audit"], counts["reports"]) == (3, 13, 5)
    assert counts["unknown_usage"] == 2  # a refused call and a stream that reported nothing
    assert {401, 403, 429, 502} <= counts["statuses"]
    # Every made-up row says so: a sample- request id, a documentation-range client address.
    assert {ip for _, ip in counts["audit_marks"]} == {"192.0.2.1"}
    ids = {rid for rid, _ in counts["audit_marks"]} | counts["report_ids"]
    assert all(rid.startswith("sample-") for rid in ids), ids
    assert counts["report_ids"] <= {rid for rid, _ in counts["audit_marks"]}
    for name, entry in saved.items():
        assert PasswordHasher().verify(counts["hashes"][name], entry["password"])

    second = await asyncio.to_thread(
        run_python, SEED, "--config", str(config), env=env, cwd=tmp_path
    )

    assert second.returncode == 0, second.stderr
    assert "already seeded" in second.stdout
    assert f"dev credentials: {credentials}" in second.stdout
    assert not any(entry["password"] in second.stdout for entry in saved.values())
    again = await database_counts(database_url)
    assert (again["users"], again["audit"], again["reports"]) == (3, 13, 5)
    assert again["hashes"] == counts["hashes"]
    assert json.loads(credentials.read_text()) == {"databases": {masked_url(database_url): saved}}


async def test_seed_without_samples_writes_no_audit_or_report_rows(
    tmp_path: Path, write_config: WriteConfig, policies: Path, sqlite_url: str
) -> None:
    config = write_config(identity_config())

    done = await asyncio.to_thread(run_python, SEED, "--config", str(config), cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "--samples adds made-up ones" in done.stdout
    counts = await database_counts(sqlite_url)
    assert (counts["users"], counts["audit"], counts["reports"]) == (3, 0, 0)


async def test_a_second_database_keeps_the_first_ones_credentials(
    tmp_path: Path, write_config: WriteConfig, policies: Path, sqlite_url: str
) -> None:
    config = write_config(WITH_DEMO)
    credentials = tmp_path / ".dev-credentials.json"
    second_url = f"sqlite+aiosqlite:///{tmp_path / 'second.db'}"

    first = await asyncio.to_thread(run_python, SEED, "--config", str(config), cwd=tmp_path)
    second = await asyncio.to_thread(
        run_python,
        SEED,
        "--config",
        str(config),
        env={"GATEWAY_DATABASE_URL": second_url},
        cwd=tmp_path,
    )

    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    saved = json.loads(credentials.read_text())["databases"]
    assert set(saved) == {sqlite_url, second_url}
    for url in (sqlite_url, second_url):
        hashes = (await database_counts(url))["hashes"]
        for name, entry in saved[url].items():
            assert PasswordHasher().verify(hashes[name], entry["password"]), (url, name)
    assert saved[sqlite_url]["dev-user"] != saved[second_url]["dev-user"]
    # make run signs in with the account of the database it serves
    loaded = load_config(config)
    for url in (sqlite_url, second_url):
        user = launch.demo_user(loaded, url)
        assert user == ("dev-user", saved[url]["dev-user"]["password"])
    # a run on the first database again points at the file: its users are still there
    again = await asyncio.to_thread(run_python, SEED, "--config", str(config), cwd=tmp_path)
    assert f"dev credentials: {credentials}" in again.stdout


async def test_an_older_flat_credentials_file_is_read_and_kept(
    tmp_path: Path, write_config: WriteConfig, policies: Path, sqlite_url: str
) -> None:
    config = write_config(WITH_DEMO)
    credentials = tmp_path / ".dev-credentials.json"
    flat = {
        "dev-admin": {"password": "old-admin-password-0123", "role": "admin"},
        "dev-user": {"password": "old-user-password-01234", "role": "user"},
    }
    credentials.write_text(json.dumps(flat))
    loaded = load_config(config)

    # read as before: the flat file answers for a database it does not name
    assert launch.demo_user(loaded, sqlite_url) == ("dev-user", "old-user-password-01234")

    second_url = f"sqlite+aiosqlite:///{tmp_path / 'second.db'}"
    result = await seed_data.seed(loaded, second_url)

    saved = json.loads(credentials.read_text())["databases"]
    assert saved[UNKNOWN_DATABASE] == flat
    assert set(saved[second_url]) == {u.username for u in result.users}
    assert launch.demo_user(loaded, sqlite_url) == ("dev-user", "old-user-password-01234")
    assert launch.demo_user(loaded, second_url) == (
        "dev-user",
        saved[second_url]["dev-user"]["password"],
    )


def test_the_demo_sign_in_is_dev_user_not_the_admin(
    tmp_path: Path, write_config: WriteConfig, policies: Path
) -> None:
    # admin inherits user, and sorts first; the README's curl lines sign in as dev-user
    config = load_config(write_config(WITH_DEMO))
    accounts = {
        name: {"password": f"{name}-password-0123", "role": role}
        for name, role in (("dev-admin", "admin"), ("dev-analyst", "analyst"), ("dev-user", "user"))
    }
    save(tmp_path / ".dev-credentials.json", "sqlite+aiosqlite:///x.db", accounts)

    assert launch.demo_user(config, "sqlite+aiosqlite:///x.db") == (
        "dev-user",
        "dev-user-password-0123",
    )


async def test_seeded_users_sign_in_with_their_roles(
    gateway: MakeGateway, write_config: WriteConfig, policies: Path, sqlite_url: str
) -> None:
    config = load_config(write_config(identity_config()))

    result = await seed_data.seed(config, sqlite_url)

    client = await gateway(identity_config())
    for user in result.users:
        tokens = await login(client, user.username, user.password)
        me = await (await client.get("/users/me", headers=bearer(tokens))).json()
        assert (me["username"], me["role"]) == (user.username, user.role)
    admin = next(u for u in result.users if u.role == "admin")
    listing = await client.get(
        "/admin/users", headers=bearer(await login(client, admin.username, admin.password))
    )
    assert listing.status == 200
    assert len((await listing.json())["items"]) == 3

    again = await seed_data.seed(config, sqlite_url)

    assert (again.users, again.existing_users) == ((), 3)
    assert "already seeded" in seed_data.report(again, sqlite_url)[0]


def test_credentials_file_is_private_even_when_one_was_left_behind(tmp_path: Path) -> None:
    path = tmp_path / ".dev-credentials.json"
    path.write_text("{}")
    path.chmod(0o644)
    (tmp_path / ".dev-credentials.json.tmp").write_text("stale")

    seed_data.write_credentials(path, "db", [seed_data.DevUser("dev-user", "p" * 24, "user")])

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {
        "databases": {"db": {"dev-user": {"password": "p" * 24, "role": "user"}}}
    }
    assert not (tmp_path / ".dev-credentials.json.tmp").exists()


def test_credentials_file_is_gitignored() -> None:
    assert ".dev-credentials.json" in (REPO / ".gitignore").read_text().splitlines()


# --- test_connection.py -------------------------------------------------------------------------


@pytest.fixture
async def listening() -> AsyncIterator[int]:
    """A real aiohttp server on 127.0.0.1 (an OS-chosen port); yields the port."""

    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def routes_with(upstreams: dict[str, int], models: dict[str, int]) -> str:
    lines = ["policies: policies/", "upstreams:"]
    lines += [f"  {n}: {{targets: [http://127.0.0.1:{p}]}}" for n, p in upstreams.items()]
    lines += ["models:"] if models else []
    lines += [f"  {n}: {{url: http://127.0.0.1:{p}}}" for n, p in models.items()]
    return "\n".join(lines) + "\n"


# The line for Redis when GATEWAY_REDIS_URL is unset: nothing reached, so no latency.
NO_REDIS_LINE = "ok   redis     not configured: in-process state"


def parsed(stdout: str) -> list[dict[str, str]]:
    rows = []
    for line in stdout.splitlines():
        if line == NO_REDIS_LINE:
            rows.append(
                {
                    "status": "ok  ",
                    "kind": "redis",
                    "subject": "not configured",
                    "ms": "",
                    "detail": "in-process state",
                }
            )
            continue
        match = LINE.match(line)
        assert match is not None, f"not a check line: {line!r}"
        rows.append(match.groupdict())
    return rows


async def test_connection_all_ok(
    tmp_path: Path, write_config: WriteConfig, policies: Path, sqlite_url: str, listening: int
) -> None:
    config = write_config(routes_with({"analytics": listening}, {"demo": listening}))

    result = await asyncio.to_thread(run_python, CHECK, "--config", str(config), cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    rows = parsed(result.stdout)
    assert [(r["status"], r["kind"], r["subject"], r["detail"]) for r in rows] == [
        ("ok  ", "database", sqlite_url, f"(schema {HEAD}, head)"),
        ("ok  ", "redis", "not configured", "in-process state"),
        ("ok  ", "upstream", f"analytics http://127.0.0.1:{listening}", ""),
        ("ok  ", "model", f"demo http://127.0.0.1:{listening}", ""),
    ]


async def test_connection_fails_for_an_upstream_on_a_closed_port(
    tmp_path: Path, write_config: WriteConfig, policies: Path, sqlite_url: str, listening: int
) -> None:
    closed = free_port()
    config = write_config(routes_with({"analytics": closed, "live": listening}, {}))

    result = await asyncio.to_thread(run_python, CHECK, "--config", str(config), cwd=tmp_path)

    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[1] == NO_REDIS_LINE
    assert re.fullmatch(
        rf"FAIL upstream  analytics http://127\.0\.0\.1:{closed}  \d+\.\d ms connection refused",
        lines[2],
    ), lines
    assert lines[3].startswith(f"ok   upstream  live http://127.0.0.1:{listening}  ")


async def test_connection_checks_redis_when_set(
    tmp_path: Path, write_config: WriteConfig, policies: Path, sqlite_url: str, redis_url: str
) -> None:
    config = write_config(routes_with({}, {}))

    result = await asyncio.to_thread(
        run_python,
        CHECK,
        "--config",
        str(config),
        env={"GATEWAY_REDIS_URL": redis_url},
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    rows = parsed(result.stdout)
    assert (rows[1]["status"], rows[1]["kind"], rows[1]["detail"]) == ("ok  ", "redis", "(PING)")
    assert rows[1]["subject"] == masked_url(redis_url)


def test_connection_masks_passwords_of_unreachable_services(
    tmp_path: Path, write_config: WriteConfig, policies: Path
) -> None:
    config = write_config(routes_with({}, {}))
    port = free_port()
    env = {
        "GATEWAY_DATABASE_URL": f"postgresql+asyncpg://gw:s3cret-db@127.0.0.1:{port}/gw",
        "GATEWAY_REDIS_URL": f"redis://:s3cret-redis@127.0.0.1:{port}/0",
    }

    result = run_python(CHECK, "--config", str(config), env=env, cwd=tmp_path)

    assert result.returncode == 1
    assert "s3cret" not in result.stdout + result.stderr
    rows = parsed(result.stdout)
    assert [(r["status"], r["kind"], r["subject"], r["detail"]) for r in rows] == [
        ("FAIL", "database", f"postgresql+asyncpg://gw:***@127.0.0.1:{port}/gw", REFUSED),
        ("FAIL", "redis", f"redis://:***@127.0.0.1:{port}/0", REFUSED),
    ]


def test_connection_on_postgres(
    tmp_path: Path, write_config: WriteConfig, policies: Path, postgres_url: str
) -> None:
    config = write_config(routes_with({}, {}))

    result = run_python(
        CHECK, "--config", str(config), env={"GATEWAY_DATABASE_URL": postgres_url}, cwd=tmp_path
    )

    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("ok   database  postgresql+asyncpg://")
    assert result.stdout.splitlines()[0].endswith(f"(schema {HEAD}, head)")


async def test_run_checks_does_not_create_a_missing_sqlite_file(
    tmp_path: Path, write_config: WriteConfig, policies: Path, listening: int
) -> None:
    config = load_config(write_config(routes_with({"analytics": listening}, {})))
    missing = tmp_path / "later.db"

    results = await test_connection.run_checks(
        config, ServiceSettings(database_url=f"sqlite+aiosqlite:///{missing}")
    )

    assert [(r.ok, r.kind) for r in results] == [
        (True, "database"),
        (True, "redis"),
        (True, "upstream"),
    ]
    assert results[0].detail == "(no file yet: the gateway creates it at start)"
    assert not missing.exists()
    assert results[2].line().startswith(f"ok   upstream  analytics http://127.0.0.1:{listening}  ")
