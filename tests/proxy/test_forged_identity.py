"""Forged identity never reaches an upstream: X-User-* in any spelling, X-Real-IP, tricky paths.

Requests are written byte for byte on a raw socket (an HTTP client library
would normalise the very names and paths under test) to a real gateway in
front of a real upstream that reports what it received.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import MakeGateway, MakeUpstream
from tests.identity import bearer, identity_config, login, make_user

Client = TestClient[web.Request, web.Application]


def recording_app(seen: list[dict[str, object]]) -> web.Application:
    async def record(request: web.Request) -> web.Response:
        seen.append({"path": request.raw_path, "headers": list(request.headers.items())})
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    return app


@pytest.fixture
def seen() -> list[dict[str, object]]:
    return []


@pytest.fixture
async def up_server(upstream: MakeUpstream, seen: list[dict[str, object]]) -> TestServer:
    return await upstream(recording_app(seen))


@pytest.fixture
async def client(gateway: MakeGateway, up_server: TestServer, policies: object) -> Client:
    assert up_server.port is not None
    return await gateway(identity_config(up_server.port))


async def raw_request(client: Client, head: str) -> tuple[int, bytes]:
    """Send `head` (lines joined with CRLF, blank line added) and read one whole answer."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


FORGED = [
    "X-User-Id: forged",
    "X_User_Id: forged",
    "x_user_id: forged",
    "X-User_Roles: admin",
    "X_USER_ROLES: admin",
    "X_User_Email: boss@example.com",
    "x-user-anything: forged",
]


@pytest.mark.parametrize("forged", FORGED)
async def test_identity_headers_in_any_spelling_are_dropped(
    client: Client, seen: list[dict[str, object]], forged: str
) -> None:
    user = await make_user(client, "una")
    token = bearer(await login(client, "una"))["Authorization"]
    status, _ = await raw_request(
        client,
        f"GET /open/x HTTP/1.1\nHost: gw\nAuthorization: {token}\n{forged}\nConnection: close",
    )
    assert status == 200
    headers = seen[-1]["headers"]
    assert isinstance(headers, list)
    names = [name.lower().replace("_", "-") for name, _ in headers]
    user_headers = {n: v for n, v in headers if n.lower().replace("_", "-").startswith("x-user-")}
    # Exactly the gateway's own two, with the verified identity: nothing the client wrote.
    assert sorted(n.lower() for n in user_headers) == ["x-user-id", "x-user-roles"]
    assert user_headers["X-User-Id"] == user.id
    assert user_headers["X-User-Roles"] == "user"
    assert names.count("x-user-id") == 1
    assert names.count("x-user-roles") == 1


async def test_identity_headers_are_dropped_on_anonymous_routes_too(
    client: Client, seen: list[dict[str, object]]
) -> None:
    status, _ = await raw_request(
        client,
        "GET /public/x HTTP/1.1\nHost: gw\nX_User_Id: forged\nX-User-Roles: admin\n"
        "Connection: close",
    )
    assert status == 200
    headers = seen[-1]["headers"]
    assert isinstance(headers, list)
    assert not [n for n, _ in headers if n.lower().replace("_", "-").startswith("x-user-")]


@pytest.mark.parametrize("name", ["X-Real-IP", "X_Real_IP", "x-real-ip"])
async def test_x_real_ip_from_an_untrusted_peer_is_dropped(
    client: Client, seen: list[dict[str, object]], name: str
) -> None:
    status, _ = await raw_request(
        client, f"GET /public/x HTTP/1.1\nHost: gw\n{name}: 203.0.113.9\nConnection: close"
    )
    assert status == 200
    headers = seen[-1]["headers"]
    assert isinstance(headers, list)
    assert not [n for n, _ in headers if n.lower().replace("_", "-") == "x-real-ip"]
    assert dict(headers)["X-Forwarded-For"] == "127.0.0.1"


async def test_x_real_ip_from_a_trusted_proxy_passes(
    gateway: MakeGateway, up_server: TestServer, seen: list[dict[str, object]], policies: object
) -> None:
    assert up_server.port is not None
    text = identity_config(up_server.port) + "server:\n  trusted_proxies: [127.0.0.1/32]\n"
    client = await gateway(text)
    status, _ = await raw_request(
        client, "GET /public/x HTTP/1.1\nHost: gw\nX-Real-IP: 203.0.113.9\nConnection: close"
    )
    assert status == 200
    headers = seen[-1]["headers"]
    assert isinstance(headers, list)
    assert dict(headers)["X-Real-IP"] == "203.0.113.9"


@pytest.mark.parametrize(
    "path",
    [
        "/public/..;/admin/users",
        "/public/%2e%2e;/admin/users",
        "/public/.;/x",
        "/public/a%2Fb",
        "/public/a%2fb",
        "/public/..%2fadmin",
        "/public/a%5Cb",
        "/public/..%5cadmin",
        "/public/a\\b",
    ],
)
async def test_ambiguous_paths_are_refused_not_forwarded(
    client: Client, seen: list[dict[str, object]], path: str
) -> None:
    status, body = await raw_request(client, f"GET {path} HTTP/1.1\nHost: gw\nConnection: close")
    assert status == 400
    problem = orjson.loads(body)
    assert problem["code"] == "bad_path"
    assert seen == []  # nothing reached the upstream


async def test_ordinary_encodings_still_pass(client: Client, seen: list[dict[str, object]]) -> None:
    status, _ = await raw_request(
        client, "GET /public/a%3Bb/%7Euser/x;v=1 HTTP/1.1\nHost: gw\nConnection: close"
    )
    assert status == 200
    assert seen[-1]["path"] == "/a%3Bb/~user/x;v=1"
