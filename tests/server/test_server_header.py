"""server.server_header: the Server header of every answer of a real `gateway serve`, never
aiohttp's (which names Python's and aiohttp's versions) nor the upstream's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.config.loader import load_config
from gateway.config.yamlsource import ConfigError
from tests.conftest import MakeUpstream, WriteConfig
from tests.processes import free_port, start_gateway, stop


def upstream_app() -> web.Application:
    """An aiohttp upstream: its own answers carry `Server: Python/3.x aiohttp/3.x`."""

    async def plain(request: web.Request) -> web.StreamResponse:
        return web.json_response({"path": request.path})

    async def socket(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(message.data)
        return ws

    app = web.Application()
    app.router.add_get("/socket", socket)
    app.router.add_route("*", "/{tail:.*}", plain)
    return app


async def raw(port: int, request: bytes) -> bytes:
    """What the gateway answers to `request` sent as bytes, until it closes or 5 s pass."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


def server_of(head: bytes) -> str | None:
    """The Server header of a raw response head."""
    for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"server":
            return value.strip().decode()
    return None


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[object]]:
    processes: list[object] = []
    yield processes
    for process in processes:
        stop(process)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("setting", "expected"),
    [(None, "gateway"), ('"edge"', "edge"), ('""', None)],
)
async def test_every_answer_carries_the_configured_server_header(
    write_config: WriteConfig,
    tmp_path: Path,
    upstream: MakeUpstream,
    started: list[object],
    setting: str | None,
    expected: str | None,
) -> None:
    up = await upstream(upstream_app())
    (tmp_path / "frontend").mkdir()
    (tmp_path / "frontend" / "index.html").write_text("<p>hi</p>")
    port, status_port = free_port(), free_port()
    header = "" if setting is None else f", server_header: {setting}"
    config = write_config(
        f"""
        server: {{status_listen: 127.0.0.1:{status_port}{header}}}
        upstreams:
          up: {{targets: ["http://127.0.0.1:{up.port}"]}}
        routes:
          - {{path: /up/**, upstream: up, strip_prefix: /up, auth: none, websocket: true}}
          - {{path: /app/**, static: frontend, auth: none}}
        """
    )
    started.append(start_gateway(config, port, tmp_path / "gateway.log"))
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        answers = {
            "local": f"{base}/healthz",
            "problem": f"{base}/nowhere",  # 404 no_route
            "proxied (lean path)": f"{base}/up/x",
            "static file": f"{base}/app/index.html",
            "status listener": f"http://127.0.0.1:{status_port}/healthz",
            "status listener's 404": f"http://127.0.0.1:{status_port}/nowhere",
        }
        for what, url in answers.items():
            async with session.get(url) as response:
                await response.read()
                assert response.headers.get("Server") == expected, what
        async with session.ws_connect(f"{base}/up/socket") as ws:  # the gateway's own 101
            assert ws._response.status == 101
            assert ws._response.headers.get("Server") == expected
            await ws.send_str("ping")
            assert (await ws.receive()).data == "ping"
    # Answers made before any request exists: unparsable HTTP (400), another version (505).
    bad = await raw(port, b"GET / HTTP/1.1\r\nHost: gw\r\nBad Header\r\n\r\n")
    assert bad.split(b" ", 2)[1] == b"400"
    assert server_of(bad) == expected
    other = await raw(port, b"GET / HTTP/2.0\r\nHost: gw\r\n\r\n")
    assert other.startswith(b"HTTP/1.1 505 ")
    assert server_of(other) == expected
    for answer in (bad, other):
        assert b"aiohttp" not in answer.lower()
        assert b"python" not in answer.lower()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('" gateway"', "' gateway' is not a header value"),
        ('"a\\u0001b"', "'a\\x01b' is not a header value"),
        ("true", "'True' is not a header value"),
    ],
)
def test_a_server_header_that_is_no_header_value_is_refused(
    write_config: WriteConfig, value: str, message: str
) -> None:

    path = write_config(f"server: {{server_header: {value}}}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"routes.yaml:1: server.server_header: {message}" in str(caught.value)
