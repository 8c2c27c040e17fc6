"""Every gateway-made error is RFC 9457 problem+json with the fields README "Errors" lists."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from gateway.context import CTX
from gateway.handlers.jsonio import json_response, read_json
from gateway.runtime import HOLDER
from tests.conftest import MakeGateway

Client = TestClient[web.Request, web.Application]
PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "request_id"}


async def boom(request: web.Request) -> web.StreamResponse:
    raise RuntimeError("SELECT * FROM users WHERE password='hunter2'")


async def echo_json(request: web.Request) -> web.StreamResponse:
    runtime = request[CTX].runtime
    assert runtime is not None
    return json_response({"got": await read_json(request, runtime.config.server.max_body)})


CONFIG = """
server: {max_body: 1KiB}
routes:
  - {path: /boom, handler: test.boom, auth: none}
  - {path: /echo, handler: test.echo, methods: [POST], auth: none}
  - {path: /private, handler: test.echo, auth: required}
"""


@pytest.fixture
async def client(gateway: MakeGateway) -> Client:
    return await gateway(CONFIG, handlers={"test.boom": boom, "test.echo": echo_json})


async def assert_problem(resp: object, status: int, code: str) -> dict[str, object]:
    assert isinstance(resp, object)
    r = resp  # aiohttp ClientResponse
    assert r.status == status  # type: ignore[attr-defined]
    assert r.headers["Content-Type"] == "application/problem+json"  # type: ignore[attr-defined]
    body = await r.json(content_type=None)  # type: ignore[attr-defined]
    assert set(body) == PROBLEM_KEYS
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith("/" + code)
    assert body["request_id"] == r.headers["X-Request-Id"]  # type: ignore[attr-defined]
    return body  # type: ignore[no-any-return]


async def test_unexpected_exception_is_a_500_without_internals(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="gateway.errors"):
        resp = await client.get("/boom", headers={"X-Request-Id": "req-500"})
        body = await assert_problem(resp, 500, "internal_error")
    text = str(body)
    assert "hunter2" not in text
    assert "Traceback" not in text
    assert "SELECT" not in text
    records = [r for r in caplog.records if r.name == "gateway.errors"]
    assert records, "the 500 must be logged"
    assert records[0].request_id == "req-500"  # type: ignore[attr-defined]
    assert records[0].exc_info is not None  # the traceback goes to the log only


async def test_404_and_405(client: Client) -> None:
    await assert_problem(await client.get("/missing"), 404, "no_route")
    resp = await client.get("/echo")
    await assert_problem(resp, 405, "method_not_allowed")
    assert resp.headers["Allow"] == "POST"


async def test_400_for_a_malformed_path(client: Client) -> None:
    # encoded=True: send the broken escape as is, not re-encoded by the client
    resp = await client.get(URL("/bad%zzpath", encoded=True))
    await assert_problem(resp, 400, "bad_path")


@pytest.mark.parametrize("accept", ["text/html", "application/json;q=0", "image/png, text/*;q=0.5"])
async def test_406_when_accept_excludes_json(client: Client, accept: str) -> None:
    await assert_problem(
        await client.get("/healthz", headers={"Accept": accept}), 406, "not_acceptable"
    )


@pytest.mark.parametrize(
    "accept",
    ["*/*", "application/json", "text/html, application/*;q=0.1", "application/problem+json"],
)
async def test_json_accepting_clients_get_answers(client: Client, accept: str) -> None:
    resp = await client.get("/healthz", headers={"Accept": accept})
    assert resp.status == 200


async def test_415_for_a_body_that_is_not_json(client: Client) -> None:
    resp = await client.post("/echo", data=b"a=1", headers={"Content-Type": "text/plain"})
    await assert_problem(resp, 415, "unsupported_media_type")
    resp = await client.post("/echo", data=b"{}")  # no Content-Type at all
    await assert_problem(resp, 415, "unsupported_media_type")


async def test_400_for_malformed_json(client: Client) -> None:
    resp = await client.post(
        "/echo", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    body = await assert_problem(resp, 400, "malformed_json")
    assert "JSON" in str(body["detail"])


async def test_json_round_trip(client: Client) -> None:
    resp = await client.post("/echo", json={"a": [1, 2]})
    assert resp.status == 200
    assert await resp.json() == {"got": {"a": [1, 2]}}


async def test_413_for_a_local_body_over_max_body(client: Client) -> None:
    big = b'{"x": "' + b"a" * 2000 + b'"}'
    resp = await client.post("/echo", data=big, headers={"Content-Type": "application/json"})
    await assert_problem(resp, 413, "body_too_large")


async def test_401_without_and_with_a_token(client: Client) -> None:
    resp = await client.get("/private")
    await assert_problem(resp, 401, "missing_token")
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    resp = await client.get("/private", headers={"Authorization": "Bearer abc.def.ghi"})
    await assert_problem(resp, 401, "token_malformed")
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def test_readyz_turns_503_while_draining(client: Client) -> None:
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ready"
    client.app[HOLDER].draining = True
    await assert_problem(await client.get("/readyz"), 503, "draining")
    assert (await client.get("/healthz")).status == 200  # alive, just not taking traffic


async def test_builtins_are_served_whatever_routes_say(gateway: MakeGateway) -> None:
    client = await gateway(
        """
        routes:
          - {path: /**, handler: test.boom, auth: none}
        """,
        handlers={"test.boom": boom},
    )
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    assert (await client.get("/other")).status == 500
