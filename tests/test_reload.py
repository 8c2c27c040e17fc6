"""Hot reload: edits to routes.yaml and policies/, and SIGHUP, swap the config of a running
gateway; in-flight requests finish on theirs; an invalid edit changes nothing but last_error."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import signal
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from gateway.config import load_config
from gateway.config.reference import SECTIONS, documented_keys
from gateway.reload import RESTART_ONLY, needs_restart
from gateway.runtime import HOLDER
from gateway.services import SERVICES
from gateway.store.audit import AuditFilter
from tests.conftest import MakeGateway, MakeUpstream, WriteConfig
from tests.identity import Client, bearer, identity_config, login, make_user
from tests.processes import free_port, start_gateway, stop

T = TypeVar("T")

NEW_ROUTE = "  - {path: /new/**, upstream: echo, strip_prefix: /new, auth: none}\n"
DEADLINE = 30.0  # seconds a change may take to show; generous, never asserted on


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    """Poll `probe` until it returns something other than None (or False)."""
    async with asyncio.timeout(DEADLINE):
        while True:
            value = await probe()
            if value is not None and value is not False:
                return value
            await asyncio.sleep(0.05)
    raise AssertionError(what)  # unreachable: the timeout raises


def replace_file(path: Path, text: str) -> None:
    """Rewrite `path` the way deploy tools do: a new file renamed over the old one."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(textwrap.dedent(text), encoding="utf-8")
    os.replace(temporary, path)


def sha256(text: str) -> str:
    return hashlib.sha256(textwrap.dedent(text).encode()).hexdigest()


async def echo(request: web.Request) -> web.Response:
    return web.json_response(
        {"path": request.path_qs, "roles": request.headers.get("X-User-Roles")}
    )


def echo_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def admin_headers(client: Client) -> dict[str, str]:
    await make_user(client, "root", "admin")
    return bearer(await login(client, "root"))


async def admin_config(client: Client, headers: dict[str, str]) -> dict[str, Any]:
    resp = await client.get("/admin/config", headers=headers)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def config_path(client: Client) -> Path:
    return client.app[HOLDER].current.config.path


# --- (1) an edited routes.yaml ---------------------------------------------


async def test_an_edited_routes_yaml_is_swapped_in(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream
) -> None:
    server = await upstream(echo_app())
    assert server.port is not None
    client = await gateway(identity_config(server.port))
    headers = await admin_headers(client)
    services = client.app[SERVICES]
    before = await admin_config(client, headers)
    assert before["version"] == 1
    assert before["last_error"] is None
    assert (await client.get("/new/x")).status == 404

    text = identity_config(server.port) + NEW_ROUTE
    replace_file(config_path(client), text)

    async def reloaded() -> dict[str, Any] | None:
        body = await admin_config(client, headers)
        return body if body["version"] > 1 else None

    after = await eventually(reloaded, "routes.yaml edit never reloaded")
    assert after["version"] == 2
    assert after["file_hash"] == sha256(text) != before["file_hash"]
    assert after["loaded_at"] != before["loaded_at"]
    assert after["policies_hash"] == before["policies_hash"]
    assert after["last_error"] is None
    resp = await client.get("/new/x?q=1")
    assert resp.status == 200
    assert (await resp.json())["path"] == "/x?q=1"
    routes = await (await client.get("/admin/routes", headers=headers)).json()
    assert "/new/**" in [r["path"] for r in routes["items"]]
    # Only config-derived objects were rebuilt: the admin's token still works,
    # on the same services.
    assert client.app[SERVICES] is services


async def test_sighup_reloads_a_running_gateway_process(
    write_config: WriteConfig, upstream: MakeUpstream, tmp_path: Path
) -> None:
    server = await upstream(echo_app())
    assert server.port is not None
    first = textwrap.dedent(
        f"""
        upstreams:
          echo: {{targets: ["http://127.0.0.1:{server.port}"]}}
        routes:
          - {{path: /old/**, upstream: echo, strip_prefix: /old, auth: none}}
        """
    )
    second = first + "  - {path: /new/**, upstream: echo, strip_prefix: /new, auth: none}\n"
    path = write_config(first)
    port = free_port()
    log_path = tmp_path / "gateway.log"
    process = start_gateway(path, port, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> dict[str, Any]:
                async with session.get(f"{base}/readyz") as resp:
                    assert resp.status == 200
                    body: dict[str, Any] = (await resp.json())["config"]
                    return body

            assert await ready() == {"version": 1, "file_hash": sha256(first)}
            # Unchanged files: SIGHUP reloads anyway (e.g. key files or ${ENV} values
            # changed); the default action would have ended the process.
            process.send_signal(signal.SIGHUP)

            async def version(at_least: int) -> dict[str, Any] | None:
                body = await ready()
                return body if body["version"] >= at_least else None

            assert await eventually(lambda: version(2), "SIGHUP never reloaded") == {
                "version": 2,
                "file_hash": sha256(first),
            }
            replace_file(path, second)
            process.send_signal(signal.SIGHUP)

            async def new_route() -> bool:
                async with session.get(f"{base}/new/x") as resp:
                    return resp.status == 200

            await eventually(new_route, "the new route never answered")
            assert (await ready())["file_hash"] == sha256(second)
            async with session.get(f"{base}/old/x") as resp:
                assert resp.status == 200
            assert process.poll() is None
    finally:
        stop(process)
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    reloads = [e for e in entries if e["msg"] == "config reloaded"]
    assert reloads[0]["trigger"] == "sighup"
    assert reloads[0]["version"] == 2


# --- (2) policies/ -----------------------------------------------------------


async def test_a_policy_change_takes_effect(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream
) -> None:
    server = await upstream(echo_app())
    assert server.port is not None
    client = await gateway(identity_config(server.port))
    headers = await admin_headers(client)
    await make_user(client, "ann", "user")
    ann = bearer(await login(client, "ann"))
    before = await admin_config(client, headers)
    assert (await client.get("/analytics/x", headers=ann)).status == 403

    # user now inherits analyst (and admin inherits user): ann passes /analytics/**
    replace_file(
        policies / "roles.yaml",
        """
        roles:
          analyst: {}
          user: {inherits: [analyst]}
          admin: {inherits: [user]}
        """,
    )

    async def allowed() -> dict[str, Any] | None:
        resp = await client.get("/analytics/x", headers=ann)
        return await resp.json() if resp.status == 200 else None

    body = await eventually(allowed, "the role change never took effect")
    assert body["roles"] == "user,analyst"
    after = await admin_config(client, headers)
    assert after["version"] == 2
    assert after["file_hash"] == before["file_hash"]
    assert after["policies_hash"] != before["policies_hash"]


async def test_a_policy_file_added_or_removed_reloads(gateway: MakeGateway, policies: Path) -> None:
    client = await gateway(identity_config())
    headers = await admin_headers(client)
    before = await admin_config(client, headers)
    auditor = {"username": "aud", "password": "correct horse battery staple", "role": "auditor"}
    resp = await client.post("/admin/users", json=auditor, headers=headers)
    assert resp.status == 400  # no such role yet

    (policies / "extra.yaml").write_text("roles:\n  auditor: {inherits: [user]}\n")

    async def version(at_least: int) -> dict[str, Any] | None:
        body = await admin_config(client, headers)
        return body if body["version"] >= at_least else None

    added = await eventually(lambda: version(2), "an added policy file never reloaded")
    assert added["policies_hash"] != before["policies_hash"]
    resp = await client.post("/admin/users", json=auditor, headers=headers)
    assert resp.status == 201, await resp.text()

    (policies / "extra.yaml").unlink()
    removed = await eventually(lambda: version(3), "a removed policy file never reloaded")
    assert removed["policies_hash"] == before["policies_hash"]
    assert removed["last_error"] is None


# --- (3) an invalid edit -----------------------------------------------------


async def test_an_invalid_edit_keeps_the_old_config_and_reports_every_problem(
    gateway: MakeGateway,
    policies: Path,
    upstream: MakeUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await upstream(echo_app())
    assert server.port is not None
    client = await gateway(identity_config(server.port))
    headers = await admin_headers(client)
    path = config_path(client)
    before = await admin_config(client, headers)

    broken = identity_config(server.port) + ("  - {path: /x/**, upstream: nowhere}\nbogus: 1\n")
    lines = broken.splitlines()
    route_line = lines.index("  - {path: /x/**, upstream: nowhere}") + 1
    bogus_line = lines.index("bogus: 1") + 1
    replace_file(path, broken)

    async def failed() -> dict[str, Any] | None:
        body = await admin_config(client, headers)
        return body if body["last_error"] is not None else None

    body = await eventually(failed, "the invalid edit was never reported")
    problems = body["last_error"]["problems"]
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}:{route_line}: ")
    assert "undefined upstream 'nowhere'" in problems[0]
    assert problems[1].startswith(f"{path}:{bogus_line}: ")
    assert "bogus" in problems[1]
    assert body["last_error"]["at"]
    # nothing changed: same version, same hash, the old routes serve
    assert body["version"] == before["version"] == 1
    assert body["file_hash"] == before["file_hash"]
    assert (await client.get("/public/x")).status == 200
    assert (await client.get("/x/y")).status == 404
    errors = [r for r in caplog.records if r.name == "gateway.reload" and r.levelname == "ERROR"]
    assert errors
    assert getattr(errors[-1], "problems", None) == problems
    assert all(problem in errors[-1].getMessage() for problem in problems)

    # a later valid edit clears the error
    fixed = identity_config(server.port) + NEW_ROUTE
    replace_file(path, fixed)

    async def cleared() -> dict[str, Any] | None:
        body = await admin_config(client, headers)
        return body if body["last_error"] is None else None

    body = await eventually(cleared, "the valid edit never cleared last_error")
    assert body["version"] == 2
    assert body["file_hash"] == sha256(fixed)
    assert (await client.get("/new/x")).status == 200


async def test_a_yaml_syntax_error_keeps_the_old_config_and_logs_its_cause(
    gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    text = "routes:\n  - {path: /old/**, handler: admin}\n"
    client = await gateway(text)
    holder = client.app[HOLDER]
    old = holder.current
    path = config_path(client)
    # `handler:` indented with a tab: PyYAML's own words would be "while scanning ..."
    path.write_text("routes:\n  - path: /new/**\n\t  handler: admin\n", encoding="utf-8")

    async def failed() -> bool:
        return holder.last_error is not None

    await eventually(failed, "the syntax error was never reported")
    assert holder.last_error is not None
    assert holder.last_error.problems == (
        f"{path}:3:1: YAML syntax: a tab in the indentation; indent with spaces, never tabs",
    )
    assert holder.current is old
    errors = [r for r in caplog.records if r.name == "gateway.reload" and r.levelname == "ERROR"]
    assert errors
    assert holder.last_error.problems[0] in errors[-1].getMessage()
    assert "while scanning" not in errors[-1].getMessage()
    assert errors[-1].exc_info is None  # no traceback for a config fault


async def test_an_invalid_policy_file_keeps_the_old_policy(
    gateway: MakeGateway, policies: Path
) -> None:
    client = await gateway(identity_config())
    headers = await admin_headers(client)
    roles = policies / "roles.yaml"
    replace_file(roles, "roles:\n  user: {inherits: [admin]}\n  admin: {inherits: [user]}\n")

    async def failed() -> dict[str, Any] | None:
        body = await admin_config(client, headers)
        return body if body["last_error"] is not None else None

    body = await eventually(failed, "the invalid policy file was never reported")
    assert body["version"] == 1
    assert [p.split(": ", 1)[0] for p in body["last_error"]["problems"]] == [f"{roles}:2"]
    assert "cycle" in body["last_error"]["problems"][0]
    # the admin still passes /admin/** on the old policy
    assert (await client.get("/admin/users", headers=headers)).status == 200


async def test_a_config_that_validates_but_cannot_be_built_is_refused(
    gateway: MakeGateway, upstream: MakeUpstream
) -> None:
    server = await upstream(echo_app())
    assert server.port is not None
    text = textwrap.dedent(
        f"""
        upstreams:
          echo: {{targets: ["http://127.0.0.1:{server.port}"]}}
        routes:
          - {{path: /old/**, upstream: echo, strip_prefix: /old, auth: none}}
        """
    )
    client = await gateway(text)
    holder = client.app[HOLDER]
    old = holder.current
    # Parses and validates; only building the keys finds the secret too short.
    broken = text + "auth:\n  keys: [{kid: a, secret: too-short}]\n"
    key_line = broken.splitlines().index("  keys: [{kid: a, secret: too-short}]") + 1
    replace_file(old.config.path, broken)

    async def failed() -> bool:
        return holder.last_error is not None

    await eventually(failed, "the unusable key was never reported")
    assert holder.last_error is not None
    [problem] = holder.last_error.problems
    assert problem.startswith(f"{old.config.path}:{key_line}: auth.keys: a: ")
    assert "at least 32 bytes" in problem
    assert holder.current is old
    assert (await client.get("/old/x")).status == 200


# --- (4) in-flight requests ----------------------------------------------------


async def test_an_in_flight_request_finishes_on_the_old_config_then_its_pool_closes(
    gateway: MakeGateway, upstream: MakeUpstream
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.json_response({"done": True})

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_route("*", "/{tail:.*}", echo)
    server = await upstream(app)
    assert server.port is not None
    target = f'targets: ["http://127.0.0.1:{server.port}"]'
    client = await gateway(
        f"""
        upstreams:
          gone: {{{target}, timeout: 30s}}
          kept: {{{target}}}
        routes:
          - {{path: /gone/**, upstream: gone, strip_prefix: /gone, auth: none}}
          - {{path: /kept/**, upstream: kept, strip_prefix: /kept, auth: none}}
        """
    )
    holder = client.app[HOLDER]
    old = holder.current
    in_flight = asyncio.ensure_future(client.get("/gone/slow"))
    async with asyncio.timeout(DEADLINE):
        await entered.wait()
    assert old.occupancy.in_flight == 1

    # The route and upstream of the request in flight are removed; `kept` is
    # unchanged (moved to another line) and its pool is taken over.
    replace_file(
        old.config.path,
        f"""
        # gone is gone
        upstreams:
          kept: {{{target}}}
        routes:
          - {{path: /kept/**, upstream: kept, strip_prefix: /kept, auth: none}}
        """,
    )

    async def swapped() -> bool:
        return holder.current is not old

    await eventually(swapped, "the edit was never swapped in")
    new = holder.current
    assert new.version == 2
    assert old.occupancy.retired
    assert [r is old for r in holder.retired] == [True]
    assert not old.pools["gone"].session.closed  # the request in flight still uses it
    assert new.pools["kept"] is old.pools["kept"]
    assert "gone" not in new.pools
    assert (await client.get("/gone/slow")).status == 404  # new requests: the new config

    release.set()
    resp = await in_flight
    assert resp.status == 200
    assert await resp.json() == {"done": True}

    async def drained() -> bool:
        return old.occupancy.in_flight == 0

    await eventually(drained, "the old config never drained")
    await holder.wait_closed()
    assert holder.retired == []
    assert old.pools["gone"].session.closed
    assert not new.pools["kept"].session.closed  # shared with the live config: kept open
    assert (await client.get("/kept/x")).status == 200


# --- (5) reloads under load ----------------------------------------------------


async def test_reloads_under_load_fail_no_request(
    write_config: WriteConfig, upstream: MakeUpstream
) -> None:
    server = await upstream(echo_app())
    assert server.port is not None

    def version_text(timeout: str) -> str:
        # The upstream's timeout differs, so each reload opens a new pool and
        # retires the old one while requests are running on it.
        return f"""
            upstreams:
              up: {{targets: ["http://127.0.0.1:{server.port}"], timeout: {timeout}}}
            routes:
              - {{path: /up/**, upstream: up, strip_prefix: /up, auth: none}}
            """

    texts = [version_text("30s"), version_text("31s")]
    path = write_config(texts[0])
    port = free_port()
    process = start_gateway(path, port)
    base = f"http://127.0.0.1:{port}"
    rewrites = 12
    done = asyncio.Event()
    statuses: dict[int, int] = {}
    failures: list[str] = []

    async def load() -> None:
        async with aiohttp.ClientSession() as session:
            sent = 0
            # at least 300 requests, and on until the last reload is in (bounded)
            while (sent < 300 or not done.is_set()) and sent < 20_000:
                sent += 1
                try:
                    async with session.get(f"{base}/up/x?n={sent}") as resp:
                        await resp.read()
                        statuses[resp.status] = statuses.get(resp.status, 0) + 1
                except aiohttp.ClientError as exc:
                    failures.append(repr(exc))

    async def reload_all(session: aiohttp.ClientSession) -> int:
        version = 1
        for i in range(1, rewrites + 1):
            text = texts[i % 2]
            replace_file(path, text)
            if i % 2:
                process.send_signal(signal.SIGHUP)  # else the file watcher notices

            async def swapped(text: str = text) -> int | None:
                async with session.get(f"{base}/readyz") as resp:
                    config = (await resp.json())["config"]
                return config["version"] if config["file_hash"] == sha256(text) else None

            version = await eventually(swapped, f"rewrite {i} never reloaded")
        done.set()
        return version

    try:
        async with aiohttp.ClientSession() as session:
            clients = [asyncio.ensure_future(load()) for _ in range(8)]
            version = await reload_all(session)
            await asyncio.gather(*clients)
    finally:
        stop(process)
    assert failures == []
    assert set(statuses) == {200}
    assert sum(statuses.values()) >= 8 * 300
    assert version >= 1 + rewrites


# --- (6) audit, and what survives -----------------------------------------------


async def test_each_reload_writes_an_audit_row(
    gateway: MakeGateway, database_url: str, upstream: MakeUpstream
) -> None:
    server = await upstream(echo_app())
    assert server.port is not None
    text = textwrap.dedent(
        f"""
        upstreams:
          echo: {{targets: ["http://127.0.0.1:{server.port}"]}}
        routes:
          - {{path: /old/**, upstream: echo, strip_prefix: /old, auth: none}}
        """
    )
    client = await gateway(text, database_url=database_url)
    holder = client.app[HOLDER]
    path = config_path(client)

    replace_file(path, text + NEW_ROUTE)

    async def version_2() -> bool:
        return holder.current.version == 2

    await eventually(version_2, "the edit never reloaded")
    replace_file(path, text + "  - {path: /bad, upstream: nowhere}\n")

    async def failed() -> bool:
        return holder.last_error is not None

    await eventually(failed, "the invalid edit was never reported")
    audit = client.app[SERVICES].audit
    await audit.flush()
    rows, _ = await audit.store.page(10, None, AuditFilter(path_prefix=str(path)))
    assert [(r["method"], r["status"], r["reason"]) for r in rows] == [
        ("RELOAD", 400, "config_invalid"),  # newest first
        ("RELOAD", 200, "config_reloaded"),
    ]
    for row in rows:
        assert row["path"] == str(path)
        assert row["route"] is None
        assert row["username"] is None
        assert row["user_id"] is None
        assert row["client_ip"] is None


async def test_rate_limits_and_sessions_survive_a_reload(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream
) -> None:
    server = await upstream(echo_app())
    assert server.port is not None
    limited = "  - {path: /limited/**, upstream: echo, auth: none, rate_limit: 2/min}\n"
    client = await gateway(identity_config(server.port) + limited)
    headers = await admin_headers(client)
    assert (await client.get("/limited/a")).status == 200
    assert (await client.get("/limited/b")).status == 200
    replace_file(config_path(client), identity_config(server.port) + limited + NEW_ROUTE)

    async def reloaded() -> bool:
        return client.app[HOLDER].current.version == 2

    await eventually(reloaded, "the edit never reloaded")
    assert (await client.get("/limited/c")).status == 429  # the bucket was kept
    assert (await client.get("/admin/config", headers=headers)).status == 200  # token too


async def test_a_reload_needing_a_restart_says_so(
    gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.reload")
    text = "routes: []\n"
    client = await gateway(text)
    replace_file(config_path(client), "server: {listen: 127.0.0.1:9999}\n" + text)

    async def reloaded() -> bool:
        return client.app[HOLDER].current.version == 2

    await eventually(reloaded, "the edit never reloaded")
    warnings = [
        r for r in caplog.records if r.name == "gateway.reload" and r.levelname == "WARNING"
    ]
    assert [getattr(r, "settings", None) for r in warnings] == [["server.listen"]]


# --- what a reload applies, and what needs a restart (README "Hot reload") ---------

README = Path(__file__).resolve().parents[1] / "README.md"
KEY_PATH = re.compile(r"`([a-z_]+(?:\.[a-z_]+)*)`")


def readme_reload_lists() -> tuple[set[str], set[str]]:
    """The key paths of README's "What a reload applies" and "What needs a restart"."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Hot reload") :]
    section = section[: section.index("\n## ", 1)]
    split = section.index("What needs a restart")
    applies = section[section.index("What a reload applies:") : split]
    restart = section[split:]
    return set(KEY_PATH.findall(applies)), set(KEY_PATH.findall(restart))


def schema_keys() -> dict[str, list[str]]:
    """Each section of the reference ("" for the top level) → the keys written in it."""
    keys: dict[str, list[str]] = {}
    for name, cls in SECTIONS:
        section = "" if name == "top level" else name
        keys[section] = [k for _, m in documented_keys(cls) for k in str(m.key).split(", ")]
    return keys


def test_readme_says_for_every_key_whether_a_reload_applies_it() -> None:
    applies, restart = readme_reload_lists()
    assert not applies & restart, f"in both lists: {applies & restart}"
    sections = schema_keys()
    every_path = {f"{s}.{k}" if s else k for s, keys in sections.items() for k in keys}
    named = applies | restart
    assert named <= every_path, f"not keys of routes.yaml: {named - every_path}"

    def covered(path: str) -> bool:
        """Named itself, or a section each of whose keys is covered."""
        if path in named:
            return True
        return path in sections and all(covered(f"{path}.{k}") for k in sections[path])

    missing = [path for path in sections[""] if not covered(path)]
    assert not missing, f"README 'Hot reload' says nothing of: {missing}"


def test_readme_restart_list_is_what_a_reload_warns_of() -> None:
    _, restart = readme_reload_lists()
    assert restart == set(RESTART_ONLY)


def test_needs_restart_names_what_changed(write_config: WriteConfig) -> None:
    old = load_config(write_config("routes: []\n"))
    new = load_config(
        write_config(
            "server: {listen: 127.0.0.1:9999, max_body: 1MiB}\n"
            "database: {timeout: 2s}\n"
            "auth: {access_ttl: 5m, login_failures: 3/min}\n"
            "routes: []\n",
            "new.yaml",
        )
    )
    assert needs_restart(old, new) == ["server.listen", "auth.login_failures", "database"]
    assert needs_restart(old, old) == []
