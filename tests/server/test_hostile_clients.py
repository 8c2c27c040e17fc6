"""Hostile clients cannot exhaust a real `gateway serve`: raw sockets that stall, dribble, idle
and flood, against server.header_timeout, keepalive_timeout, max_connections and body_timeout."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import MakeUpstream, WriteConfig
from tests.processes import IdleFlood, free_port, start_gateway, stop

GET_HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
Serve = Callable[[int, str], int]  # (upstream port, server settings) -> the gateway's port


class Upstream:
    """An upstream whose /slow answers only once the test releases it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered: asyncio.Queue[None] = asyncio.Queue()  # one item per /slow request

    def app(self) -> web.Application:
        async def slow(request: web.Request) -> web.Response:
            self.entered.put_nowait(None)
            await self.release.wait()
            return web.json_response({"slow": True})

        async def fast(request: web.Request) -> web.Response:
            return web.json_response({"path": request.path})

        app = web.Application()
        app.router.add_get("/slow", slow)
        app.router.add_route("*", "/{tail:.*}", fast)
        return app

    async def wait_entered(self, count: int) -> None:
        async with asyncio.timeout(10):
            for _ in range(count):
                await self.entered.get()


def config_text(upstream_port: int, server: str) -> str:
    return f"""
        server: {{{server}}}
        upstreams:
          up: {{targets: ["http://127.0.0.1:{upstream_port}"], timeout: 60s}}
        routes:
          - {{path: /auth/login, methods: [POST], handler: auth.login, auth: none}}
          - {{path: /open/**, upstream: up, strip_prefix: /open, auth: none}}
        """


@pytest.fixture
def serve(write_config: WriteConfig, tmp_path: Path) -> Iterator[Serve]:
    """Start `gateway serve` with the given server settings; stopped after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(upstream_port: int, server: str) -> int:
        port = free_port()
        config = write_config(config_text(upstream_port, server))
        started.append(start_gateway(config, port, tmp_path / "gateway.log"))
        return port

    yield start
    for process in started:
        stop(process)


async def start_upstream(upstream: MakeUpstream) -> tuple[Upstream, int]:
    slow = Upstream()
    server = await upstream(slow.app())
    assert server.port is not None
    return slow, server.port


async def read_to_close(reader: asyncio.StreamReader, seconds: float) -> tuple[bytes, bool]:
    """What the server sends until it closes the connection (True) or `seconds` pass (False)."""
    data = b""
    try:
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(65536):
                data += chunk
    except TimeoutError:
        return data, False
    except ConnectionError:  # reset, or a write after the server closed (broken pipe)
        pass
    return data, True


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    found = re.search(rb"(?i)\r\ncontent-length: *([0-9]+)", head)
    assert found is not None, head
    return int(head.split(b" ", 2)[1]), await reader.readexactly(int(found.group(1)))


async def status_of(port: int, path: str, seconds: float = 10.0) -> int:
    """One request on a new connection, as a monitoring probe or an admin's curl makes it."""
    async with asyncio.timeout(seconds):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode())
            status, _ = await read_response(reader)
            return status
        finally:
            writer.close()


async def test_a_stalled_head_gets_408_and_is_closed_after_header_timeout(
    upstream: MakeUpstream, serve: Serve
) -> None:
    _, upstream_port = await start_upstream(upstream)
    port = serve(upstream_port, "header_timeout: 1s")

    async def half_a_head() -> tuple[bytes, bool]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")  # and never the blank line
        return await read_to_close(reader, 3.0)  # 3x the timeout: proves "no hang"

    async def silent() -> tuple[bytes, bool]:
        reader, _ = await asyncio.open_connection("127.0.0.1", port)
        return await read_to_close(reader, 3.0)

    async def slow_but_in_time() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for piece in (b"GET /healthz HT", b"TP/1.1\r\nHost: ", b"gw\r\n\r\n"):
            writer.write(piece)
            await asyncio.sleep(0.15)
        status, _ = await read_response(reader)
        writer.close()
        return status

    (partial, partial_closed), (nothing, silent_closed), served = await asyncio.gather(
        half_a_head(), silent(), slow_but_in_time()
    )
    assert partial_closed
    assert partial.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"header_timeout"' in partial
    # A connection that never sent a byte is closed without an answer it never asked for.
    assert silent_closed
    assert nothing == b""
    assert served == 200


async def test_slowloris_beyond_max_connections_leaves_healthz_and_proxy_answering(
    upstream: MakeUpstream, serve: Serve
) -> None:
    _, upstream_port = await start_upstream(upstream)
    port = serve(upstream_port, "header_timeout: 2s, max_connections: 200")
    opened = asyncio.Event()
    count = 500

    async def dribbler() -> tuple[bytes, bool]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Slow: ")

        async def dribble() -> None:
            await opened.wait()
            try:
                while True:
                    writer.write(b"a")  # a byte at a time: the head never completes
                    await asyncio.sleep(0.2)
            except (ConnectionError, RuntimeError):
                return

        task = asyncio.create_task(dribble())
        try:
            return await read_to_close(reader, 10.0)
        finally:
            task.cancel()
            writer.close()

    loris = [asyncio.create_task(dribbler()) for _ in range(count)]
    await asyncio.sleep(0.5)  # every connection is open and has sent part of a head
    opened.set()
    # 500 half-open heads against a cap of 200: new clients still get in, and answers.
    assert await status_of(port, "/healthz") == 200
    assert await status_of(port, "/open/anything") == 200
    outcomes = await asyncio.gather(*loris)
    # Each was cut off: evicted for a newer client (503 overloaded, as part of a
    # head had come) or timed out (408); none was kept open.
    assert all(closed for _, closed in outcomes)
    answers = {data.split(b"\r\n", 1)[0] for data, _ in outcomes}
    assert answers <= {
        b"HTTP/1.1 408 Request Timeout",
        b"HTTP/1.1 503 Service Unavailable",
        b"",
    }, answers
    assert b"HTTP/1.1 408 Request Timeout" in answers  # the 200 that were never evicted


async def test_an_idle_keepalive_connection_closes_after_keepalive_timeout(
    upstream: MakeUpstream, serve: Serve
) -> None:
    _, upstream_port = await start_upstream(upstream)
    port = serve(upstream_port, "keepalive_timeout: 1s")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(GET_HEALTHZ)
        assert (await read_response(reader))[0] == 200
        await asyncio.sleep(0.2)
        writer.write(b"GET /open/again HTTP/1.1\r\nHost: gw\r\n\r\n")  # keep-alive works ...
        assert (await read_response(reader))[0] == 200
        data, closed = await read_to_close(reader, 3.0)  # ... and then idles out
        assert closed
        assert data == b""
    finally:
        writer.close()


async def test_an_idle_flood_of_20000_sockets_beyond_max_connections(
    upstream: MakeUpstream, serve: Serve
) -> None:
    slow, upstream_port = await start_upstream(upstream)
    port = serve(upstream_port, "max_connections: 200")
    busy = asyncio.create_task(status_of(port, "/open/slow", 60.0))
    await slow.wait_entered(1)  # a request in progress before the flood
    # Two processes of 10,000 each: one process may hold 20,000 files at most here.
    floods = [IdleFlood(port, 10_000, "127.0.0.2"), IdleFlood(port, 10_000, "127.0.0.3")]
    try:
        opened = await asyncio.gather(*(asyncio.to_thread(f.wait_open) for f in floods))
        assert opened == [10_000, 10_000]
        assert await status_of(port, "/healthz") == 200
        assert await status_of(port, "/open/anything") == 200
        # The gateway keeps at most 200 connections: the oldest idle ones made room.
        async with asyncio.timeout(20):
            while True:
                closed = sum(
                    await asyncio.gather(*(asyncio.to_thread(f.closed_by_server) for f in floods))
                )
                if closed >= 20_000 - 200:
                    break
                await asyncio.sleep(0.2)
        # The busy connection was never evicted: its answer still arrives.
        slow.release.set()
        assert await busy == 200
    finally:
        slow.release.set()
        for flood in floods:
            flood.stop()


async def test_when_every_connection_is_busy_a_new_one_is_refused_with_503(
    upstream: MakeUpstream, serve: Serve
) -> None:
    slow, upstream_port = await start_upstream(upstream)
    port = serve(upstream_port, "max_connections: 3")
    busy = [asyncio.create_task(status_of(port, "/open/slow")) for _ in range(3)]
    try:
        await slow.wait_entered(3)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET_HEALTHZ)
        data, closed = await read_to_close(reader, 5.0)
        writer.close()
        assert closed
        assert data.startswith(b"HTTP/1.1 503 ")
        assert b'"code":"overloaded"' in data
        assert b"\r\nRetry-After: 1\r\n" in data
        slow.release.set()
        assert await asyncio.gather(*busy) == [200, 200, 200]  # the busy ones kept working
        assert await status_of(port, "/healthz") == 200  # and the slots came back
    finally:
        slow.release.set()


async def test_the_status_listener_answers_probes_when_every_client_connection_is_busy(
    upstream: MakeUpstream, serve: Serve
) -> None:
    slow, upstream_port = await start_upstream(upstream)
    status_port = free_port()
    port = serve(upstream_port, f"max_connections: 2, status_listen: 127.0.0.1:{status_port}")
    busy = [asyncio.create_task(status_of(port, "/open/slow")) for _ in range(2)]
    try:
        await slow.wait_entered(2)
        assert await status_of(port, "/healthz") == 503  # the client listener is full
        # The status listener has connections of its own: the probes still answer.
        assert await status_of(status_port, "/healthz") == 200
        assert await status_of(status_port, "/readyz") == 200
        # Nothing is routed there: an upstream route is a 404, and never reaches it.
        assert await status_of(status_port, "/open/slow") == 404
        assert slow.entered.empty()
        slow.release.set()
        assert await asyncio.gather(*busy) == [200, 200]
    finally:
        slow.release.set()


async def test_a_local_body_that_stalls_gets_408_and_the_connection_closes(
    upstream: MakeUpstream, serve: Serve
) -> None:
    _, upstream_port = await start_upstream(upstream)
    port = serve(upstream_port, "body_timeout: 1s")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /auth/login HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"username"'  # 10 of the 100 bytes
        )
        data, closed = await read_to_close(reader, 3.0)
    finally:
        writer.close()
    assert closed
    assert data.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"body_timeout"' in data
    assert b"\r\nConnection: close\r\n" in data
