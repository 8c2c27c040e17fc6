"""The audit stage through the real chain: one row per request, report rows, no secrets.

Real upstreams on loopback, the real writer, on SQLite and PostgreSQL. The
writer's interval is an hour, so rows reach the database exactly when a
test calls `flush()`: what is counted is what was written, never a race.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import select
from yarl import URL

from gateway.services import SERVICES
from models import AuditLog, ReportLog
from tests.conftest import MakeGateway, MakeUpstream
from tests.identity import PASSWORD, Client, bearer, identity_config, login, make_user

UPSTREAM_BODY = b"0123456789" * 50  # what the upstream's /bytes answers


def upstream_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"path": request.path, "body_len": len(body)})

    async def fixed(request: web.Request) -> web.Response:
        return web.Response(body=UPSTREAM_BODY, content_type="application/octet-stream")

    async def reset_mid_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 100_000
        await response.prepare(request)
        await response.write(b"x" * 1000)
        assert request.transport is not None
        request.transport.close()
        return response

    async def failing(request: web.Request) -> web.Response:
        return web.json_response({"error": "model broke"}, status=500)

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/bytes", fixed)
    app.router.add_get("/reset", reset_mid_body)
    app.router.add_post("/v1/fail", failing)
    app.router.add_route("*", "/v1/{tail:.*}", echo)
    return app


def config(port: int) -> str:
    return identity_config(port) + (
        "models:\n"
        f'  m1: {{url: "http://127.0.0.1:{port}", roles: [user]}}\n'
        "audit: {flush_interval: 1h}\n"
    )


@pytest.fixture
async def up(upstream: MakeUpstream) -> TestServer:
    return await upstream(upstream_app())


@pytest.fixture
async def client(gateway: MakeGateway, policies: Path, database_url: str, up: TestServer) -> Client:
    assert up.port is not None
    return await gateway(config(up.port), database_url=database_url)


async def table(client: Client, model: type[Any] = AuditLog) -> list[dict[str, Any]]:
    """Every row of `model`'s table, oldest first, once the writer has written all it holds."""
    services = client.app[SERVICES]
    await services.audit.flush()
    async with services.engine.connect() as connection:
        result = await connection.execute(select(model).order_by(model.id))
        return [dict(row) for row in result.mappings()]


async def row_of(client: Client, request_id: str) -> dict[str, Any]:
    rows = [r for r in await table(client) if r["request_id"] == request_id]
    assert len(rows) == 1, rows  # exactly one row per request
    return rows[0]


def rid(name: str) -> dict[str, str]:
    return {"X-Request-Id": name}


# --- one row per request, whatever its outcome --------------------------------------


async def test_an_allowed_local_request_is_one_row(client: Client) -> None:
    user = await make_user(client, "alice")
    headers = bearer(await login(client, "alice"))
    before = time.time()
    resp = await client.get("/users/me", headers={**headers, **rid("t-allowed")})
    body = await resp.read()
    after = time.time()
    assert resp.status == 200
    row = await row_of(client, "t-allowed")
    assert row["user_id"] == user.id
    assert row["username"] == "alice"
    assert row["role"] == "user"
    assert row["method"] == "GET"
    assert row["path"] == "/users/me"
    assert row["route"] == "/users/me/**"
    assert row["upstream"] is None
    assert row["status"] == 200
    assert row["reason"] is None
    assert row["client_ip"] == "127.0.0.1"
    assert row["bytes_in"] == 0
    assert row["bytes_out"] == len(body)
    assert 0 < row["latency_ms"] <= (after - before) * 1000
    ts = row["ts"] if row["ts"].tzinfo else row["ts"].replace(tzinfo=UTC)  # SQLite: naive UTC
    assert before - 1 <= ts.timestamp() <= after + 1  # when the response was finished


@pytest.mark.parametrize(
    ("method", "path", "who", "status", "reason", "route"),
    [
        ("GET", "/users/me", None, 401, "missing_token", "/users/me/**"),
        ("GET", "/admin/users", "user", 403, "role_forbidden", "/admin/**"),
        ("GET", "/nowhere/at/all", "user", 404, "no_route", None),
        ("GET", "/auth/login", None, 405, "method_not_allowed", None),
        ("GET", "/users/me/../../nowhere", None, 404, "no_route", None),
    ],
)
async def test_a_denied_request_is_one_row_with_its_reason(
    client: Client,
    method: str,
    path: str,
    who: str | None,
    status: int,
    reason: str,
    route: str | None,
) -> None:
    headers = rid("t-denied")
    if who is not None:
        await make_user(client, "bob", who)
        headers.update(bearer(await login(client, "bob")))
    resp = await client.request(method, path, headers=headers)
    body = await resp.read()
    assert resp.status == status
    row = await row_of(client, "t-denied")
    assert row["status"] == status
    assert row["reason"] == reason
    assert row["route"] == route
    assert row["method"] == method
    assert row["bytes_out"] == len(body)  # the problem body, exactly
    assert row["username"] == ("bob" if who and status == 403 else None)


async def test_an_unparsable_path_is_one_row_with_the_raw_path(client: Client) -> None:
    resp = await client.get(URL("/bad%zzpath?q=1", encoded=True), headers=rid("t-path"))
    assert resp.status == 400
    row = await row_of(client, "t-path")
    assert row["reason"] == "bad_path"
    assert row["path"] == "/bad%zzpath"  # as sent, still without the query
    assert row["route"] is None


async def test_a_bad_token_is_one_row_with_the_token_error(client: Client) -> None:
    resp = await client.get("/users/me", headers={**bearer("not.a.jwt"), **rid("t-bad")})
    assert resp.status == 401
    row = await row_of(client, "t-bad")
    assert row["reason"] == "token_malformed"
    assert row["user_id"] is None


async def test_a_proxied_request_is_one_row_with_upstream_and_bytes(client: Client) -> None:
    await make_user(client, "carol", "analyst")
    headers = bearer(await login(client, "carol"))
    payload = b"p" * 1234
    resp = await client.post(
        "/analytics/echo?page=2", data=payload, headers={**headers, **rid("t-proxy")}
    )
    assert resp.status == 200
    assert (await resp.json())["body_len"] == 1234
    resp = await client.get("/analytics/bytes", headers={**headers, **rid("t-bytes")})
    assert await resp.read() == UPSTREAM_BODY

    row = await row_of(client, "t-proxy")
    assert row["path"] == "/analytics/echo"  # never the query string
    assert row["route"] == "/analytics/**"
    assert row["upstream"] == "echo"
    assert row["username"] == "carol"
    assert row["role"] == "analyst"
    assert row["status"] == 200
    assert row["bytes_in"] == 1234
    assert row["reason"] is None
    streamed = await row_of(client, "t-bytes")
    # A streamed response counts what was written: the body and the response head.
    assert len(UPSTREAM_BODY) < streamed["bytes_out"] < len(UPSTREAM_BODY) + 1024


async def test_a_chunked_upload_counts_the_bytes_streamed(client: Client) -> None:
    await make_user(client, "dave")
    headers = bearer(await login(client, "dave"))

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"c" * 1000

    resp = await client.post("/open/echo", data=chunks(), headers={**headers, **rid("t-chunk")})
    assert resp.status == 200
    assert (await resp.json())["body_len"] == 10_000
    row = await row_of(client, "t-chunk")
    assert row["bytes_in"] == 10_000


async def test_a_response_cut_short_records_why(client: Client) -> None:
    resp = await client.get("/public/reset", headers=rid("t-reset"))
    with pytest.raises(aiohttp.ClientError):  # the client sees the body cut
        await resp.read()
    row = await row_of(client, "t-reset")
    assert row["status"] == 200
    assert row["reason"] == "upstream_reset"
    assert row["upstream"] == "echo"


async def test_an_unreachable_upstream_is_one_row_with_the_proxy_error(
    gateway: MakeGateway, database_url: str
) -> None:
    from tests.processes import free_port

    port = free_port()  # nothing listens here
    text = f"""
        upstreams:
          gone: {{targets: ["http://127.0.0.1:{port}"]}}
        routes:
          - {{path: /gone/**, upstream: gone, auth: none}}
        audit: {{flush_interval: 1h}}
        """
    client = await gateway(text, database_url=database_url)
    resp = await client.get("/gone/x", headers=rid("t-gone"))
    assert resp.status == 502
    row = await row_of(client, "t-gone")
    assert row["reason"] == "upstream_unreachable"
    assert row["upstream"] == "gone"


async def test_every_request_is_one_row_and_nothing_else(client: Client) -> None:
    for i in range(30):
        await client.get("/healthz" if i % 2 else f"/missing/{i}", headers=rid(f"n-{i}"))
    rows = await table(client)
    assert [r["request_id"] for r in rows] == [f"n-{i}" for i in range(30)]
    assert {r["path"] for r in rows if r["status"] == 200} == {"/healthz"}


# --- report rows ------------------------------------------------------------------


async def test_model_calls_become_report_rows(client: Client) -> None:
    started = time.time()
    user = await make_user(client, "erin")
    headers = bearer(await login(client, "erin"))
    resp = await client.post(
        "/models/m1/v1/chat", json={"prompt": "hi"}, headers={**headers, **rid("m-ok")}
    )
    assert resp.status == 200
    body = await resp.read()
    resp = await client.post("/models/m1/v1/fail", json={}, headers={**headers, **rid("m-500")})
    assert resp.status == 500
    resp = await client.post("/models/m1/v1/chat", json={}, headers=rid("m-401"))
    assert resp.status == 401  # refused by the gateway: not a model call

    reports = await table(client, ReportLog)
    assert [r["request_id"] for r in reports] == ["m-ok", "m-500"]
    ok = reports[0]
    assert ok["model"] == "m1"
    assert ok["user_id"] == user.id
    assert ok["username"] == "erin"
    assert ok["route"] == "/models/m1/**"
    assert ok["status"] == 200
    assert ok["bytes_in"] == len(b'{"prompt": "hi"}')
    assert ok["bytes_out"] >= len(body)
    assert 0 < ok["latency_ms"] <= (time.time() - started) * 1000
    assert ok["prompt_tokens"] is None  # unknown: no usage reading yet
    assert ok["completion_tokens"] is None
    assert ok["total_tokens"] is None
    assert reports[1]["status"] == 500
    audit = {r["request_id"]: r for r in await table(client)}
    assert audit["m-ok"]["upstream"] == "m1"
    assert audit["m-401"]["reason"] == "missing_token"


# --- secrets never reach a row ----------------------------------------------------------


async def test_no_secret_reaches_any_column_of_any_row(client: Client) -> None:
    await make_user(client, "frank", password=PASSWORD)
    tokens = await login(client, "frank")
    access, refresh = tokens["access_token"], tokens["refresh_token"]
    secrets = {
        "password": PASSWORD,
        "access": access,
        "refresh": refresh,
        "cookie": "session-cookie-value-7f3a9c",
        "query": "query-token-value-51b2e8",
        "api_key": "x-api-key-value-c4d9f1",
    }
    noisy = {
        "Authorization": f"Bearer {access}",
        "Cookie": f"session={secrets['cookie']}",
        "X-Api-Key": secrets["api_key"],
    }
    await client.post("/auth/login", json={"username": "frank", "password": PASSWORD})
    await client.post("/auth/login", json={"username": "frank", "password": "wrong " + PASSWORD})
    await client.post("/auth/refresh", json={"refresh_token": refresh}, headers=noisy)
    await client.get(f"/users/me?token={secrets['query']}", headers=noisy)
    await client.get(f"/open/echo?access_token={secrets['query']}", headers=noisy)
    await client.get(f"/nowhere?token={secrets['query']}", headers=noisy)
    bad_path = URL(f"/users/%zz?token={secrets['query']}", encoded=True)
    assert (await client.get(bad_path, headers=noisy)).status == 400
    await client.post("/models/m1/v1/chat", json={"key": secrets["api_key"]}, headers=noisy)

    rows = await table(client) + await table(client, ReportLog)
    assert len(rows) >= 10
    for row in rows:
        for column, value in row.items():
            text = str(value)
            for name, secret in secrets.items():
                assert secret not in text, f"{name} found in column {column}: {row}"
            assert "session=" not in text
            assert "token=" not in text


# --- bookkeeping ---------------------------------------------------------------------


async def test_the_writer_reports_its_depth_and_lag(client: Client) -> None:
    writer = client.app[SERVICES].audit
    await writer.flush()
    assert writer.depth == 0
    assert writer.lag_seconds == 0.0
    before = time.time()
    for _ in range(3):
        await client.get("/healthz")
    assert writer.depth == 3  # the interval is an hour: nothing was written yet
    assert 0 < writer.lag_seconds <= time.time() - before  # the first row's wait
    await writer.flush()
    assert writer.depth == 0
    assert writer.dropped == 0
