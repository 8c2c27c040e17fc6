"""`gateway db upgrade` and `gateway users create`, run as real commands on real databases."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import select
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from argon2 import PasswordHasher, extract_parameters
from redis import Redis

from gateway.store.migrate import head_revision
from tests.conftest import MakeGateway, WriteConfig, postgres_admin
from tests.identity import PASSWORD, bearer, identity_config, login
from tests.processes import free_port

REPO = Path(__file__).resolve().parents[2]
HEAD = head_revision()
CREATED = re.compile(
    r"^created user '(?P<name>[^']+)': id (?P<id>[0-9a-f]{32}), role (?P<role>\S+)$"
)


def run_python(
    *args: str, stdin: str = "", env: Mapping[str, str] | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """`python ARGS` with this environment plus `env`, stdin given, output captured."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def gateway_cli(
    *args: str, stdin: str = "", env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "gateway", *args, stdin=stdin, env=env)


def create_user(
    config: Path, username: str, role: str, password: str = PASSWORD, **env: str
) -> subprocess.CompletedProcess[str]:
    return gateway_cli(
        "users", "create", username, "--role", role, "--config", str(config),
        stdin=password + "\n", env=env,
    )  # fmt: skip


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}


def stored_hash(path: Path, username: str) -> str:
    with sqlite3.connect(path) as connection:
        row = connection.execute(
            "SELECT password_hash FROM users WHERE username = ?", (username,)
        ).fetchone()
    assert row is not None, f"no user {username!r}"
    return str(row[0])


@pytest.fixture
def empty_postgres(postgres_database: str) -> Iterator[str]:
    """A PostgreSQL database of this test's own with no schema at all; dropped afterwards."""
    from sqlalchemy.engine import make_url

    name = f"gw_cli_{uuid.uuid4().hex[:10]}"
    postgres_admin(postgres_database, f'CREATE DATABASE "{name}"')
    yield make_url(postgres_database).set(database=name).render_as_string(hide_password=False)
    postgres_admin(postgres_database, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- gateway db upgrade ---------------------------------------------------------------------


def test_db_upgrade_migrates_a_new_sqlite_file_beside_routes_yaml_once(
    tmp_path: Path, write_config: WriteConfig, policies: Path
) -> None:
    config = write_config(identity_config())
    database = tmp_path / "gateway.db"

    first = gateway_cli("db", "upgrade", "--config", str(config))

    assert first.returncode == 0, first.stderr
    assert first.stdout == (
        f"database sqlite+aiosqlite:///{database}\nschema none -> {HEAD} (head)\n"
    )
    assert {"users", "refresh_tokens", "audit_logs", "report_logs", "alembic_version"} <= tables(
        database
    )

    second = gateway_cli("db", "upgrade", "--config", str(config))

    assert second.returncode == 0, second.stderr
    assert second.stdout == (
        f"database sqlite+aiosqlite:///{database}\nschema {HEAD}: already at head, nothing to do\n"
    )


def test_db_upgrade_on_postgres_then_test_connection_sees_the_schema(
    empty_postgres: str, write_config: WriteConfig, policies: Path
) -> None:
    config = write_config("policies: policies/\n")
    env = {"GATEWAY_DATABASE_URL": empty_postgres}

    before = run_python("test_connection.py", "--config", str(config), env=env)
    first = gateway_cli("db", "upgrade", "--config", str(config), env=env)
    second = gateway_cli("db", "upgrade", "--config", str(config), env=env)
    after = run_python("test_connection.py", "--config", str(config), env=env)

    assert before.returncode == 1
    assert f"schema none, head {HEAD}: run `gateway db upgrade`" in before.stdout
    assert before.stdout.startswith("FAIL database  postgresql+asyncpg://")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[1] == f"schema none -> {HEAD} (head)"
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[1] == f"schema {HEAD}: already at head, nothing to do"
    assert after.returncode == 0, after.stdout
    assert after.stdout.startswith("ok   database  postgresql+asyncpg://")
    assert f"(schema {HEAD}, head)" in after.stdout


def test_db_upgrade_says_in_one_line_that_the_database_is_unreachable(
    write_config: WriteConfig, policies: Path
) -> None:
    config = write_config("policies: policies/\n")
    port = free_port()
    url = f"postgresql+asyncpg://gw:s3cret-pw@127.0.0.1:{port}/gw"

    result = gateway_cli(
        "db", "upgrade", "--config", str(config), env={"GATEWAY_DATABASE_URL": url}
    )

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"gateway db upgrade: database postgresql+asyncpg://gw:***@127.0.0.1:{port}/gw: "
        "connection refused\n"
    )


# --- gateway users create ---------------------------------------------------------------------


async def test_created_user_signs_in_through_the_gateway(
    gateway: MakeGateway, write_config: WriteConfig, policies: Path, database_url: str
) -> None:
    config = write_config(identity_config())

    result = await asyncio.to_thread(
        create_user, config, "alice", "analyst", GATEWAY_DATABASE_URL=database_url
    )

    assert result.returncode == 0, result.stderr
    created = CREATED.match(result.stdout.strip())
    assert created is not None, result.stdout
    assert created["role"] == "analyst"
    assert PASSWORD not in result.stdout + result.stderr
    assert "$argon2" not in result.stdout + result.stderr
    client = await gateway(identity_config(), database_url=database_url)
    tokens = await login(client, "alice")
    me = await client.get("/users/me", headers=bearer(tokens))
    assert me.status == 200
    profile = await me.json()
    assert (profile["id"], profile["username"], profile["role"]) == (
        created["id"],
        "alice",
        "analyst",
    )


def test_users_create_makes_the_database_and_hashes_with_the_configured_cost(
    tmp_path: Path, write_config: WriteConfig, policies: Path
) -> None:
    config = write_config(identity_config())  # password_hashing: t=1, 64 KiB, p=1
    # The password is the whole line: inner and trailing spaces are kept, the newline is not.
    password = "  spaced out password  "

    result = create_user(config, "bob", "user", password)

    assert result.returncode == 0, result.stderr
    password_hash = stored_hash(tmp_path / "gateway.db", "bob")
    assert PasswordHasher().verify(password_hash, password)
    parameters = extract_parameters(password_hash)
    assert (parameters.time_cost, parameters.memory_cost, parameters.parallelism) == (1, 64, 1)


@pytest.mark.parametrize(
    ("username", "role", "password", "message"),
    [
        ("carol", "user", "short", "weak password: password must be at least 12 characters long"),
        ("carol", "user", "a" * 20, "weak password: password must not be a single character"),
        (
            "carol",
            "boss",
            PASSWORD,
            "unknown role 'boss': the policies define admin, analyst, user",
        ),
        ("x", "user", PASSWORD, "invalid username 'x': 3 to 64 letters, digits"),
        ("a b", "user", PASSWORD, "invalid username 'a b'"),
        ("_carol", "user", PASSWORD, "invalid username '_carol'"),
        ("c" * 65, "user", PASSWORD, "invalid username"),
    ],
)
def test_users_create_refuses(
    write_config: WriteConfig, policies: Path, username: str, role: str, password: str, message: str
) -> None:
    config = write_config(identity_config())

    result = create_user(config, username, role, password)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_users_create_refuses_a_taken_username(
    tmp_path: Path, write_config: WriteConfig, policies: Path
) -> None:
    config = write_config(identity_config())
    assert create_user(config, "dave", "user").returncode == 0

    again = create_user(config, "dave", "admin", "another good password")

    assert again.returncode == 1
    assert again.stderr == "username 'dave' is taken\n"
    assert stored_hash(tmp_path / "gateway.db", "dave")  # the first one is untouched


def test_users_create_needs_a_password_on_stdin(write_config: WriteConfig, policies: Path) -> None:
    config = write_config(identity_config())

    result = gateway_cli("users", "create", "erin", "--role", "user", "--config", str(config))

    assert result.returncode == 1
    assert result.stderr == "no password given: write it as one line on stdin\n"


def test_users_create_shares_the_new_user_through_redis(
    write_config: WriteConfig, policies: Path, redis_url: str, redis_prefix: str
) -> None:
    config = write_config(identity_config())

    result = create_user(
        config,
        "frank",
        "admin",
        GATEWAY_REDIS_URL=redis_url,
        GATEWAY_REDIS_PREFIX=redis_prefix,
    )

    assert result.returncode == 0, result.stderr
    created = CREATED.match(result.stdout.splitlines()[0])
    assert created is not None, result.stdout
    assert result.stdout.splitlines()[1].startswith("shared with running gateways through redis")
    redis = Redis.from_url(redis_url)
    try:
        key = f"{redis_prefix}user:{created['id']}"
        # UserState.encode(), then its stamp
        assert (redis.get(key) or b"").startswith(b"admin\t1\tfrank\t")
        redis.delete(key)
    finally:
        redis.close()


def test_users_create_warns_when_redis_is_down_but_keeps_the_user(
    tmp_path: Path, write_config: WriteConfig, policies: Path
) -> None:
    config = write_config(identity_config())
    port = free_port()

    result = create_user(
        config, "gina", "user", GATEWAY_REDIS_URL=f"redis://:pw9@127.0.0.1:{port}/0"
    )

    assert result.returncode == 0, result.stderr
    assert CREATED.match(result.stdout.strip())
    assert result.stderr == (
        f"warning: redis redis://:***@127.0.0.1:{port}/0: connection refused; "
        "running gateways read the new user from the database instead\n"
    )
    assert stored_hash(tmp_path / "gateway.db", "gina")


# --- on a terminal: getpass, twice ----------------------------------------------------------------


def on_terminal(args: list[str], answers: list[str], seconds: float = 30.0) -> tuple[int, str]:
    """Run `python ARGS` on a pseudo-terminal, answering each prompt (text ending ': ') in turn."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal, as getpass wants
        try:
            os.execve(sys.executable, [sys.executable, *args], dict(os.environ))  # noqa: S606
        finally:
            os._exit(127)
    output = b""
    pending = list(answers)
    answered_at = 0  # only a prompt printed after the last answer is a new one
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], seconds)
            if not ready:
                raise TimeoutError(f"no output within {seconds}s; so far: {output!r}")
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if pending and output[answered_at:].endswith(b": "):
                os.write(fd, pending.pop(0).encode() + b"\n")
                answered_at = len(output)
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_users_create_prompts_twice_on_a_terminal(
    tmp_path: Path, write_config: WriteConfig, policies: Path
) -> None:
    config = write_config(identity_config())
    command = [
        "-m",
        "gateway",
        "users",
        "create",
        "hana",
        "--role",
        "user",
        "--config",
        str(config),
    ]

    status, output = on_terminal(command, [PASSWORD, PASSWORD])

    assert status == 0, output
    assert "Password:" in output
    assert "Repeat the password:" in output
    assert "created user 'hana'" in output
    assert PASSWORD not in output  # getpass does not echo
    assert PasswordHasher().verify(stored_hash(tmp_path / "gateway.db", "hana"), PASSWORD)


def test_users_create_on_a_terminal_wants_the_same_password_twice(
    tmp_path: Path, write_config: WriteConfig, policies: Path
) -> None:
    config = write_config(identity_config())
    command = [
        "-m",
        "gateway",
        "users",
        "create",
        "ivan",
        "--role",
        "user",
        "--config",
        str(config),
    ]

    status, output = on_terminal(command, [PASSWORD, PASSWORD + "!"])

    assert status == 1
    assert "the passwords do not match" in output
    assert not (tmp_path / "gateway.db").exists()  # refused before touching the database
