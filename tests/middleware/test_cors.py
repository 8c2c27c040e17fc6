"""CORS (server.cors), per the Fetch standard: preflights answered before routing and
authentication, Access-Control-* on every response to an allowed origin (errors
included), nothing for other origins, nothing at all without server.cors."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from gateway.config import ConfigError, load_config
from tests.conftest import MakeGateway, WriteConfig
from tests.identity import Client, bearer, identity_config, login, make_user

APP = "https://app.example.com"
CORS = f"""
server:
  cors:
    origins: ["{APP}", "http://localhost:5173"]
    credentials: true
    max_age: 5m
"""


@pytest.fixture
async def client(gateway: MakeGateway, policies: Path, echo: TestServer) -> Client:
    return await gateway(CORS + identity_config(echo.port))


def preflight(method: str = "GET", headers: str = "Authorization", origin: str = APP) -> dict:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


async def test_a_preflight_is_answered_without_a_token(client: Client) -> None:
    response = await client.options("/analytics/x", headers=preflight())
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "GET" in response.headers["Access-Control-Allow-Methods"]
    assert response.headers["Access-Control-Allow-Headers"] == "Authorization"
    assert response.headers["Access-Control-Max-Age"] == "300"
    assert "Origin" in response.headers["Vary"]


@pytest.mark.parametrize(
    ("asked", "code"),
    [
        (preflight(origin="https://evil.example"), "cors_origin_forbidden"),
        (preflight(method="TRACE"), "cors_method_forbidden"),
        (preflight(headers="Authorization, X-Secret"), "cors_header_forbidden"),
    ],
)
async def test_a_preflight_asking_too_much_is_refused(
    client: Client, asked: dict, code: str
) -> None:
    response = await client.options("/analytics/x", headers=asked)
    assert response.status == 403
    assert (await response.json())["code"] == code
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_an_allowed_origin_can_read_answers_and_errors(client: Client) -> None:
    await make_user(client, "ann", role="analyst")
    token = bearer(await login(client, "ann"))
    ok = await client.get("/analytics/x", headers={"Origin": APP, **token})
    assert ok.status == 200
    assert ok.headers["Access-Control-Allow-Origin"] == APP
    assert ok.headers["Access-Control-Allow-Credentials"] == "true"
    assert "X-Request-Id" in ok.headers["Access-Control-Expose-Headers"]
    assert "Origin" in ok.headers["Vary"]
    refused = await client.get("/analytics/x", headers={"Origin": APP})
    assert refused.status == 401  # the frontend can read why
    assert refused.headers["Access-Control-Allow-Origin"] == APP


async def test_another_origin_gets_nothing(client: Client) -> None:
    response = await client.get("/open/x", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Credentials" not in response.headers


async def test_any_origin_without_credentials(
    gateway: MakeGateway, policies: Path, echo: TestServer
) -> None:
    text = 'server:\n  cors: {origins: ["*"]}\n' + identity_config(echo.port)
    client = await gateway(text)
    response = await client.get("/public/x", headers={"Origin": "https://any.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers


async def test_without_cors_nothing_changes(client: Client, gateway: MakeGateway) -> None:
    plain = await gateway(identity_config())
    response = await plain.options("/auth/login", headers=preflight())
    assert "Access-Control-Allow-Origin" not in response.headers
    assert response.status == 405  # an ordinary OPTIONS request


@pytest.mark.parametrize(
    ("cors", "message"),
    [
        ('{origins: ["*"], credentials: true}', "origins * cannot go with credentials: true"),
        ('{origins: ["https://app.example.com/path"]}', "is not an origin"),
        ("{credentials: true}", "server.cors.origins: required"),
        ('{origins: ["https://a.example"], headers: ["bad header"]}', "not a header"),
    ],
)
def test_bad_cors_settings_are_refused(write_config: WriteConfig, cors: str, message: str) -> None:
    path = write_config(f"server:\n  cors: {cors}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = "\n".join(str(p) for p in caught.value.problems)
    assert message in text
    assert f"{path}:2" in text
