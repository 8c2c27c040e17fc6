"""A closed client connection is freed at once, not left to the cyclic garbage collector.

After an idle flood the gateway closes tens of thousands of connections; if
each were a reference cycle, the full collection that frees them stalls the
event loop for tens of milliseconds (bench/slowloris.py saw /healthz answers
over 100 ms). The gateway runs in this process, with real sockets, so the
collector's findings can be counted; the clients are plain blocking sockets
in a thread, so they leave no asyncio objects of their own.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from pathlib import Path

from aiohttp import web

from gateway.app import build_app
from gateway.config import load_config
from gateway.runtime import HOLDER
from gateway.server.connections import ConnectionGuard
from gateway.server.protocol import GatewayRunner, ProblemRequestHandler

ROOT = Path(__file__).resolve().parents[2]
CONNECTIONS = 50


def clients(port: int) -> None:
    """Connections that close each way: idle, half a head, and a whole request."""
    for i in range(CONNECTIONS):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            if i % 3 == 1:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            elif i % 3 == 2:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                while sock.recv(65536):
                    pass


async def test_closed_connections_leave_no_reference_cycle(tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text(
        "server: {listen: 127.0.0.1:0}\n"
        "auth: {issuer: gateway, algorithm: HS256}\n"
        f"policies: {ROOT / 'policies'}\n"
        "routes: []\n"
    )
    config = load_config(tmp_path / "routes.yaml")
    app = build_app(config)
    holder = app[HOLDER]
    loop = asyncio.get_running_loop()
    guard = ConnectionGuard(lambda: holder.current.config.server, clock=loop.time)
    runner = GatewayRunner(app, guard=guard, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        await asyncio.to_thread(clients, port)
        for _ in range(50):  # until the gateway has seen every connection close
            if guard.open == 0:
                break
            await asyncio.sleep(0.05)
        assert guard.open == 0
        gc.collect()
        handlers = [o for o in gc.garbage if isinstance(o, ProblemRequestHandler)]
        transports = [
            o
            for o in gc.garbage
            if isinstance(o, asyncio.Transport)
            and (o.get_extra_info("sockname") or ("", 0))[1] == port
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        await runner.cleanup()
    assert handlers == []
    assert transports == []
