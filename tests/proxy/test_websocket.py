"""WebSocket proxying on routes with `websocket: true`: a real gateway in front of a real
aiohttp WebSocket upstream, a real aiohttp WebSocket client (README "WebSockets")."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from gateway.demo.model import build_demo_app
from gateway.proxy.websocket import Frames, close_frame
from tests.auditrows import audit_rows
from tests.conftest import MakeGateway, MakeUpstream, WriteConfig
from tests.identity import bearer, identity_config, login, make_user
from tests.processes import free_port, start_gateway, stop

Client = TestClient[web.Request, web.Application]
WAIT = 10.0  # seconds a test waits for a frame at most (the gateway closes within 5 s)


class Upstream:
    """A WebSocket upstream: /ws echoes every frame and says what it saw; /refuse is 403."""

    def __init__(self) -> None:
        self.handshakes: list[dict[str, Any]] = []
        self.closes: list[int | None] = []
        self.closed = asyncio.Event()

    def app(self) -> web.Application:
        async def ws(request: web.Request) -> web.WebSocketResponse:
            self.handshakes.append(
                {"query": request.query_string, "headers": dict(request.headers)}
            )
            sock = web.WebSocketResponse(autoping=False, max_msg_size=0)
            await sock.prepare(request)
            async for msg in sock:
                if msg.type == WSMsgType.TEXT:
                    if msg.data == "close-4000":
                        await sock.close(code=4000, message=b"bye")
                        break
                    await sock.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await sock.send_bytes(msg.data)
                elif msg.type == WSMsgType.PING:
                    await sock.pong(msg.data)
                elif msg.type == WSMsgType.CLOSE:
                    break
            self.closes.append(sock.close_code)
            self.closed.set()
            return sock

        async def plain(request: web.Request) -> web.Response:
            return web.json_response({"plain": True})

        async def refuse(request: web.Request) -> web.Response:
            return web.json_response({"refused": True}, status=403)

        app = web.Application()
        app.router.add_get("/ws", ws)
        app.router.add_get("/refuse", refuse)
        app.router.add_get("/plain", plain)
        return app


def config(port: int, auth: str = "") -> str:
    return identity_config(port, auth_extra=auth) + (
        "  - {path: /live/**, upstream: echo, strip_prefix: /live, websocket: true}\n"
        "  - {path: /staff/**, upstream: echo, strip_prefix: /staff, websocket: true, "
        "roles: [analyst]}\n"
        "  - {path: /anon/**, upstream: echo, strip_prefix: /anon, websocket: true, "
        "auth: none}\n"
    )


@pytest.fixture
def up() -> Upstream:
    return Upstream()


@pytest.fixture
async def up_server(upstream: MakeUpstream, up: Upstream) -> TestServer:
    return await upstream(up.app())


@pytest.fixture
async def client(gateway: MakeGateway, up_server: TestServer, policies: Path) -> Client:
    assert up_server.port is not None
    return await gateway(config(up_server.port))


async def user_token(client: Client, name: str = "ada", role: str = "user") -> str:
    await make_user(client, name, role)
    token: str = (await login(client, name))["access_token"]
    return token


async def closed_with(sock: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read until the gateway (or upstream) closes the WebSocket; its close code."""
    async with asyncio.timeout(WAIT):
        while True:
            msg = await sock.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                return sock.close_code


# --- frames both ways -------------------------------------------------------------


async def test_every_kind_of_frame_passes_both_ways(client: Client) -> None:
    token = await user_token(client)
    async with client.ws_connect("/live/ws", headers=bearer(token), autoping=False) as sock:
        await sock.send_str("héllo")
        assert (await sock.receive()).data == "héllo"
        await sock.send_bytes(b"\x00\x01\xff" * 1000)
        assert (await sock.receive()).data == b"\x00\x01\xff" * 1000
        await sock.ping(b"are you there")
        pong = await sock.receive()
        assert (pong.type, pong.data) == (WSMsgType.PONG, b"are you there")
        # A close code chosen by the upstream reaches the client unchanged.
        await sock.send_str("close-4000")
        assert await closed_with(sock) == 4000


async def test_a_close_code_of_the_client_reaches_the_upstream(
    client: Client, up: Upstream
) -> None:
    token = await user_token(client)
    sock = await client.ws_connect("/live/ws", headers=bearer(token))
    await sock.send_str("x")
    await sock.receive()
    await sock.close(code=4001, message=b"done")
    async with asyncio.timeout(WAIT):
        await up.closed.wait()
    assert up.closes == [4001]


async def test_a_plain_request_on_a_websocket_route_is_proxied_as_http(client: Client) -> None:
    token = await user_token(client)
    resp = await client.get("/live/plain", headers=bearer(token))
    assert resp.status == 200
    assert await resp.json() == {"plain": True}


async def test_an_upgrade_the_upstream_refuses_is_relayed(client: Client) -> None:
    token = await user_token(client)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/live/refuse", headers=bearer(token))
    assert info.value.status == 403


# --- the upgrade is judged like any request ---------------------------------------


async def test_an_upgrade_on_a_route_without_websocket_is_400(client: Client) -> None:
    token = await user_token(client)
    for path in ("/open/ws", "/users/me", "/healthz"):
        resp = await client.get(
            path,
            headers={
                **bearer(token),
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
            },
        )
        assert resp.status == 400, path
        assert (await resp.json())["code"] == "upgrade_not_allowed"


async def test_an_upgrade_without_a_token_is_401_and_with_a_bad_role_403(
    client: Client,
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/live/ws")
    assert info.value.status == 401
    token = await user_token(client)  # role user; /staff needs analyst
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/staff/ws", headers=bearer(token))
    assert info.value.status == 403


async def test_the_access_token_query_parameter_is_taken_and_never_forwarded(
    client: Client, up: Upstream
) -> None:
    token = await user_token(client)
    async with client.ws_connect(f"/live/ws?room=7&access_token={token}&x=1") as sock:
        await sock.send_str("hi")
        assert (await sock.receive()).data == "hi"
    (seen,) = up.handshakes
    assert seen["query"] == "room=7&x=1"
    assert token not in str(seen["headers"])
    assert seen["headers"]["X-User-Roles"].startswith("user")
    # Only on upgrades: a plain request must send its token in the header.
    resp = await client.get(f"/live/plain?access_token={token}")
    assert resp.status == 401


async def test_an_auth_none_websocket_route_needs_no_token(client: Client) -> None:
    async with client.ws_connect("/anon/ws") as sock:
        await sock.send_str("open")
        assert (await sock.receive()).data == "open"


async def test_a_model_entry_with_websocket_proxies_the_models_live_chat(
    gateway: MakeGateway, upstream: MakeUpstream, policies: Path
) -> None:
    """models: entries take every route key, `websocket` included: the demo model's
    /v1/live through /models/demo/**, while a model without it refuses the upgrade."""
    demo = await upstream(build_demo_app("demo"))
    models = (
        "models:\n"
        f"  demo: {{url: 'http://127.0.0.1:{demo.port}', websocket: true}}\n"
        f"  quiet: {{url: 'http://127.0.0.1:{demo.port}'}}\n"
    )
    client = await gateway(identity_config() + models)
    token = await user_token(client)
    words: list[str] = []
    async with client.ws_connect("/models/demo/v1/live", headers=bearer(token)) as sock:
        await sock.send_str("over the socket")
        async with asyncio.timeout(WAIT):
            while (msg := await sock.receive()).type == WSMsgType.TEXT:
                if msg.data.startswith("{"):
                    assert msg.json() == {"done": True, "model": "demo"}
                    break
                words.append(msg.data)
    assert "".join(words).strip().endswith("over the socket")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/models/quiet/v1/live", headers=bearer(token))
    assert info.value.status == 400


# --- the gateway closes what may no longer stay open ------------------------------


async def logout_closes(opened_on: Client, logout_on: Client, token: str) -> None:
    """A WebSocket opened on one gateway is closed with 1008 once the token logs out."""
    async with opened_on.ws_connect("/live/ws", headers=bearer(token)) as sock:
        await sock.send_str("before")
        assert (await sock.receive()).data == "before"
        resp = await logout_on.post("/auth/logout", headers=bearer(token), json={})
        assert resp.status in (200, 204)
        assert await closed_with(sock) == 1008


async def test_logout_closes_an_open_websocket_with_1008(client: Client) -> None:
    await logout_closes(client, client, await user_token(client))


async def test_a_reused_refresh_token_closes_the_websockets_of_its_family(
    client: Client,
) -> None:
    await make_user(client, "eve")
    first = await login(client, "eve")
    async with client.ws_connect("/live/ws", headers=bearer(first["access_token"])) as sock:
        spent = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert spent.status == 200
        await sock.send_str("still open")  # a rotation alone revokes nothing
        assert (await sock.receive()).data == "still open"
        replay = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert replay.status == 401  # a replay: the family and its access tokens revoked
        assert await closed_with(sock) == 1008


async def test_deactivation_and_a_role_change_close_with_1008(
    client: Client, root: dict[str, str]
) -> None:
    users = {}
    for name in ("bo", "cy"):
        await make_user(client, name, "analyst")
        users[name] = (await login(client, name))["access_token"]
    first = await client.ws_connect("/staff/ws", headers=bearer(users["bo"]))
    second = await client.ws_connect("/staff/ws", headers=bearer(users["cy"]))
    listing = await (await client.get("/admin/users?limit=500", headers=root)).json()
    ids = {u["username"]: u["id"] for u in listing["items"]}
    resp = await client.patch(f"/admin/users/{ids['bo']}", headers=root, json={"active": False})
    assert resp.status == 200, await resp.text()
    resp = await client.patch(f"/admin/users/{ids['cy']}", headers=root, json={"role": "user"})
    assert resp.status == 200, await resp.text()
    assert await closed_with(first) == 1008
    assert await closed_with(second) == 1008


async def test_an_expired_token_closes_the_websocket(
    gateway: MakeGateway, up_server: TestServer, policies: Path
) -> None:
    assert up_server.port is not None
    client = await gateway(config(up_server.port).replace("access_ttl: 15m", "access_ttl: 3s"))
    token = await user_token(client)
    async with client.ws_connect("/live/ws", headers=bearer(token)) as sock:
        assert await closed_with(sock) == 1008


async def test_an_idle_websocket_is_closed_with_1001(
    gateway: MakeGateway, up_server: TestServer, policies: Path
) -> None:
    assert up_server.port is not None
    text = config(up_server.port).replace(
        "websocket: true}", "websocket: true, websocket_idle_timeout: 1s}", 1
    )
    client = await gateway(text)
    token = await user_token(client)
    async with client.ws_connect("/live/ws", headers=bearer(token)) as sock:
        assert await closed_with(sock) == 1001


async def test_a_logout_on_one_instance_closes_the_websocket_on_another(
    gateway: MakeGateway,
    up_server: TestServer,
    policies: Path,
    redis_url: str,
    redis_prefix: str,
) -> None:
    assert up_server.port is not None
    text = config(up_server.port)
    a = await gateway(text, redis_url=redis_url, redis_prefix=redis_prefix)
    b = await gateway(text, redis_url=redis_url, redis_prefix=redis_prefix)
    token = await user_token(a)  # one database, one Redis: both instances know the user
    await logout_closes(b, a, token)


async def test_a_ten_mib_message_passes_with_flat_memory(
    write_config: WriteConfig, up_server: TestServer, tmp_path: Path
) -> None:
    assert up_server.port is not None
    port = free_port()
    path = write_config(
        f"""
        upstreams:
          echo: {{targets: ["http://127.0.0.1:{up_server.port}"]}}
        routes:
          - {{path: /live/**, upstream: echo, strip_prefix: /live, websocket: true, auth: none}}
        """
    )
    process = start_gateway(path, port, tmp_path / "gateway.log")
    try:
        gateway_rss = psutil.Process(process.pid).memory_info
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://127.0.0.1:{port}/live/ws", max_msg_size=0) as sock,
        ):
            await sock.send_bytes(b"w" * 65536)  # warm: every buffer on the way made once
            assert len((await sock.receive()).data) == 65536
            before = gateway_rss().rss
            message = bytes(range(256)) * (10 * 4096)  # 10 MiB
            await sock.send_bytes(message)
            echoed = await sock.receive(timeout=60)
            after = gateway_rss().rss
            assert echoed.data == message
        # A proxy that held the message whole would grow by 10 MiB at least, twice.
        assert after - before < 4 * 2**20, (before, after)
    finally:
        stop(process)


async def test_sigterm_closes_open_websockets_with_1001_and_the_gateway_exits(
    write_config: WriteConfig, up_server: TestServer, tmp_path: Path
) -> None:
    assert up_server.port is not None
    port = free_port()
    path = write_config(
        f"""
        server: {{shutdown_grace: 30s}}
        upstreams:
          echo: {{targets: ["http://127.0.0.1:{up_server.port}"]}}
        routes:
          - {{path: /live/**, upstream: echo, strip_prefix: /live, websocket: true, auth: none}}
        """
    )
    process = start_gateway(path, port, tmp_path / "gateway.log")
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://127.0.0.1:{port}/live/ws") as sock,
        ):
            await sock.send_str("up")
            assert (await sock.receive()).data == "up"
            process.send_signal(signal.SIGTERM)
            assert await closed_with(sock) == 1001
        # Well within the 30 s grace: the tunnel did not hold the shutdown up.
        assert await asyncio.to_thread(process.wait, WAIT) == 0
    finally:
        stop(process)


# --- the record of a connection -----------------------------------------------------


async def test_one_audit_row_at_close_and_the_open_gauge(client: Client, up: Upstream) -> None:
    token = await user_token(client)
    sock = await client.ws_connect(
        "/live/ws", headers={**bearer(token), "X-Request-Id": "ws-audit-1"}
    )
    metrics = await (await client.get("/metrics")).text()
    assert "gateway_websockets_open 1.0" in metrics
    await sock.send_bytes(b"z" * 5000)
    assert len((await sock.receive()).data) == 5000
    await sock.close()
    async with asyncio.timeout(WAIT):
        await up.closed.wait()
    rows = [r for r in await audit_rows(client) if r["request_id"] == "ws-audit-1"]
    assert "gateway_websockets_open 0.0" in await (await client.get("/metrics")).text()
    assert len(rows) == 1
    (row,) = rows
    assert row["status"] == 101
    assert row["route"] == "/live/**"
    assert row["bytes_in"] > 5000
    assert row["bytes_out"] > 5000
    assert row["username"] == "ada"


# --- the frame reader -----------------------------------------------------------------


def test_frames_find_boundaries_across_any_split() -> None:
    frames = [
        close_frame(1000, "ok", masked=True),
        bytes((0x82, 126)) + (300).to_bytes(2, "big") + b"a" * 300,
        bytes((0x81, 0x80 | 127)) + (70000).to_bytes(8, "big") + b"mask" + b"b" * 70000,
        bytes((0x89, 0)),
    ]
    stream = b"".join(frames)
    ends = set()
    total = 0
    for frame in frames:
        total += len(frame)
        ends.add(total)
    for size in (1, 2, 3, 7, 13, 4096):
        reader = Frames()
        seen = 0
        for start in range(0, len(stream), size):
            chunk = stream[start : start + size]
            assert reader.scan(chunk) == len(chunk)
            seen += len(chunk)
            assert reader.at_boundary() == (seen in ends), (size, seen)
        assert reader.closed
    # With stop, a scan passes the rest of the current frame and nothing more.
    reader = Frames()
    assert reader.scan(stream[:10]) == 10
    assert reader.scan(stream[10:], stop=True) == len(frames[0]) - 10
