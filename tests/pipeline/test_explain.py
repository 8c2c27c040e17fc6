"""Explain why: POST /admin/explain and `gateway explain` replay the chain without
proxying or counting, and decide exactly as the request itself would (same status,
same reason code); each denial's reason code is the problem's and the audit row's."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from gateway.services import SERVICES
from gateway.store.audit import AuditFilter
from tests.conftest import MakeGateway
from tests.identity import Client, bearer, identity_config, login, make_user

LIMITED = """
  - {path: /once/**, upstream: echo, strip_prefix: /once, rate_limit: 1/min}
"""


@pytest.fixture
async def client(gateway: MakeGateway, policies: Path, echo: TestServer) -> Client:
    return await gateway(identity_config(echo.port) + LIMITED)


async def explained(
    client: Client, root: dict[str, str], method: str, path: str, token: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"method": method, "path": path}
    if token is not None:
        body["token"] = token
    response = await client.post("/admin/explain", json=body, headers=root)
    assert response.status == 200
    result: dict[str, Any] = await response.json()
    return result


async def same_as_the_request(
    client: Client, root: dict[str, str], method: str, path: str, token: str | None
) -> dict[str, Any]:
    """Explain, then send the request itself: both must say the same."""
    result = await explained(client, root, method, path, token)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.request(method, path, headers=headers)
    if result["allowed"]:
        assert response.status < 400, result
    else:
        assert response.status == result["status"], result
        assert (await response.json())["code"] == result["code"], result
    return result


async def test_each_denial_is_the_requests_own(client: Client, root: dict[str, str]) -> None:
    await make_user(client, "una", role="user")
    user = (await login(client, "una"))["access_token"]
    nowhere = await same_as_the_request(client, root, "GET", "/nowhere", user)
    assert (nowhere["decided_by"], nowhere["code"]) == ("route", "no_route")
    anonymous = await same_as_the_request(client, root, "GET", "/analytics/x", None)
    assert (anonymous["decided_by"], anonymous["code"]) == ("authentication", "missing_token")
    tampered = await same_as_the_request(client, root, "GET", "/analytics/x", user[:-3] + "abc")
    assert tampered["decided_by"] == "authentication"
    assert tampered["code"].startswith("token_")
    forbidden = await same_as_the_request(client, root, "GET", "/analytics/x", user)
    assert (forbidden["decided_by"], forbidden["code"]) == ("policy", "role_forbidden")
    assert "analyst" in forbidden["steps"][-1]["detail"]  # which role the route needs
    allowed = await same_as_the_request(client, root, "GET", "/open/x", user)
    assert allowed["allowed"] is True
    assert allowed["target"] == "upstream echo"
    assert [s["stage"] for s in allowed["steps"]] == [
        "route",
        "authentication",
        "policy",
        "rate limit",
    ]


async def test_a_revoked_token_is_explained(client: Client, root: dict[str, str]) -> None:
    await make_user(client, "una", role="analyst")
    tokens = await login(client, "una")
    assert (await client.post("/auth/logout", headers=bearer(tokens))).status == 204
    result = await same_as_the_request(client, root, "GET", "/analytics/x", tokens["access_token"])
    assert (result["decided_by"], result["code"]) == ("authentication", "token_revoked")


async def test_explaining_counts_nothing(client: Client, root: dict[str, str]) -> None:
    await make_user(client, "una", role="user")
    token = (await login(client, "una"))["access_token"]
    for _ in range(3):  # 1/min: a counted explanation would spend the limit
        assert (await explained(client, root, "GET", "/once/x", token))["allowed"] is True
    assert (await client.get("/once/x", headers=bearer({"access_token": token}))).status == 200
    spent = await same_as_the_request(client, root, "GET", "/once/x", token)
    assert (spent["decided_by"], spent["status"], spent["code"]) == (
        "rate limit",
        429,
        "rate_limited",
    )


async def test_only_admins_may_ask(client: Client) -> None:
    await make_user(client, "una", role="user")
    user = bearer(await login(client, "una"))
    response = await client.post(
        "/admin/explain", json={"method": "GET", "path": "/"}, headers=user
    )
    assert response.status == 403
    bad = await client.post("/admin/explain", json={"method": "GET"}, headers=user)
    assert bad.status == 403  # the role is judged before the body


async def test_the_command_explains_from_routes_yaml_and_the_database(
    gateway: MakeGateway, policies: Path, echo: TestServer, write_config: Any
) -> None:
    text = identity_config(echo.port)
    client = await gateway(text)  # the same folder: routes.yaml and gateway.db beside it
    await make_user(client, "una", role="user")
    token = (await login(client, "una"))["access_token"]
    config = write_config(text)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env["GATEWAY_JWT_SECRET"] = os.environ["GATEWAY_JWT_SECRET"]
        return subprocess.run(
            [sys.executable, "-m", "gateway", "explain", *args, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )

    denied = run("GET", "/analytics/x", "--token", token)
    assert denied.returncode == 1, denied.stderr
    assert "denied by policy: 403 role_forbidden" in denied.stdout
    assert "role 'user' may not use /analytics/**" in denied.stdout
    allowed = run("GET", "/open/x", "--token", token)
    assert allowed.returncode == 0, allowed.stderr
    assert "allowed: would go to upstream echo" in allowed.stdout
    anonymous = run("GET", "/analytics/x")
    assert anonymous.returncode == 1
    assert "401 missing_token" in anonymous.stdout


async def test_a_denial_has_one_reason_code_in_problem_audit_and_log(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.errors"):
        response = await client.get("/analytics/x", headers={"X-Request-Id": "why-1"})
    assert response.status == 401
    problem = await response.json()
    assert problem["code"] == "missing_token"
    assert problem["type"].endswith("/missing_token")  # a stable type per reason
    [line] = [r for r in caplog.records if r.getMessage() == "denied"]
    fields = (line.code, line.status, line.request_id)  # type: ignore[attr-defined]
    assert fields == ("missing_token", 401, "why-1")
    services = client.app[SERVICES]
    await services.audit.flush()
    rows, _ = await services.audit.store.page(10, None, AuditFilter())
    [row] = [r for r in rows if r["request_id"] == "why-1"]
    assert row["reason"] == "missing_token"
