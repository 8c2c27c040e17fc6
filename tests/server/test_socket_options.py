"""Accepted connections keep TCP_NODELAY although the gateway no longer sets it itself.

aiohttp sets TCP_NODELAY (and SO_KEEPALIVE) on each accepted connection through a
socket object per call; the gateway's connection skips both (gateway/server/protocol.py)
because both event loops it runs on, asyncio's and uvloop, set TCP_NODELAY on every
TCP connection already. Without it a small response head would wait for Nagle's
algorithm. Checked on a real listener and a real client socket, on both loops.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web

from gateway.app import build_app
from gateway.config import load_config
from gateway.server.protocol import GatewayRunner

ROOT = Path(__file__).resolve().parents[2]


async def accepted_nodelay(folder: Path) -> int:
    """TCP_NODELAY of the gateway's side of one accepted connection."""
    (folder / "routes.yaml").write_text(
        f"auth: {{issuer: gateway, algorithm: HS256}}\npolicies: {ROOT / 'policies'}\nroutes: []\n"
    )
    app = build_app(load_config(folder / "routes.yaml"))
    runner = GatewayRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        server = runner.server  # the connection has answered: it is in the list
        assert server is not None
        transport = server.connections[0].transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        value: int = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        writer.close()
        return value
    finally:
        await runner.cleanup()


Run = Callable[[Coroutine[Any, Any, int]], int]


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_accepted_connections_have_tcp_nodelay(tmp_path: Path, run: Run) -> None:
    assert run(accepted_nodelay(tmp_path)) != 0
