"""A static route goes through the whole chain: authentication, roles, rate limit and the
audit row apply to it as to any route."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.auditrows import audit_rows
from tests.conftest import MakeGateway
from tests.identity import Client, bearer, identity_config, login, make_user

PAGE = b"<!doctype html><title>reports</title>"

ROUTES = """
  - {path: /reports/**, static: site, roles: [analyst]}
  - {path: /members/**, static: site}
  - {path: /open/**, static: site, auth: none, rate_limit: {limit: 2, per: 1h, key: ip}}
audit: {flush_interval: 1h}
"""


@pytest.fixture
async def client(gateway: MakeGateway, policies: Path, tmp_path: Path) -> Client:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_bytes(PAGE)
    (tmp_path / "site" / "app.js").write_bytes(b"1;")
    return await gateway(identity_config() + ROUTES)


async def test_a_static_route_needs_a_token_unless_auth_none(client: Client) -> None:
    resp = await client.get("/members/app.js")
    assert resp.status == 401
    assert (await resp.json())["code"] == "missing_token"
    await make_user(client, "alice", "user")
    resp = await client.get("/members/app.js", headers=bearer(await login(client, "alice")))
    assert resp.status == 200
    assert await resp.read() == b"1;"


async def test_roles_on_a_static_route_give_403_to_other_roles(client: Client) -> None:
    await make_user(client, "alice", "user")
    await make_user(client, "ann", "analyst")
    user = bearer(await login(client, "alice"))
    resp = await client.get("/reports/", headers=user)
    assert resp.status == 403
    assert resp.content_type == "application/problem+json"
    resp = await client.get("/reports/", headers=bearer(await login(client, "ann")))
    assert resp.status == 200
    assert await resp.read() == PAGE


async def test_rate_limit_on_a_static_route(client: Client) -> None:
    assert (await client.get("/open/app.js")).status == 200
    assert (await client.get("/open/app.js")).status == 200
    resp = await client.get("/open/app.js")
    assert resp.status == 429
    assert (await resp.json())["code"] == "rate_limited"


async def test_each_static_request_is_one_audit_row_with_its_real_status(client: Client) -> None:
    sent = await client.get("/open/", headers={"X-Request-Id": "t-static-200"})
    etag = sent.headers["ETag"]
    assert await sent.read() == PAGE
    again = await client.get(
        "/open/", headers={"X-Request-Id": "t-static-304", "If-None-Match": etag}
    )
    assert again.status == 304
    rows = {r["request_id"]: r for r in await audit_rows(client)}
    first, second = rows["t-static-200"], rows["t-static-304"]
    assert (first["status"], first["route"], first["path"]) == (200, "/open/**", "/open/")
    assert first["bytes_out"] == len(PAGE)
    assert first["upstream"] is None
    assert (second["status"], second["bytes_out"]) == (304, 0)


async def test_a_refused_static_request_is_an_audit_row_too(client: Client) -> None:
    resp = await client.get("/open/.env", headers={"X-Request-Id": "t-static-404"})
    assert resp.status == 404
    rows = {r["request_id"]: r for r in await audit_rows(client)}
    assert (rows["t-static-404"]["status"], rows["t-static-404"]["reason"]) == (404, "no_file")


async def test_admins_see_static_routes_and_explain_names_the_folder(
    client: Client, tmp_path: Path
) -> None:
    await make_user(client, "root", "admin")
    root = bearer(await login(client, "root"))
    items = (await (await client.get("/admin/routes", headers=root)).json())["items"]
    reports = next(r for r in items if r["path"] == "/reports/**")
    assert (reports["static"], reports["spa"], reports["handler"]) == (
        str(tmp_path / "site"),
        False,
        None,
    )
    assert reports["methods"] == ["GET", "HEAD"]
    explained = await client.post(
        "/admin/explain", json={"method": "GET", "path": "/open/app.js"}, headers=root
    )
    result = await explained.json()
    assert result["allowed"] is True
    assert result["target"] == f"static {tmp_path / 'site'}"
