"""The lean server path (gateway/server/lean.py): upstream routes skip aiohttp.web, and
nothing a client or the audit log can see changes.

Two gateways run the same routes.yaml in this process on real sockets, one on
GatewayRunner's lean path and one with it switched off (every request through
aiohttp.web and the middleware chain, as before the lean path existed). The
same raw requests go to both; the answers must be the same bytes but for the
Date header, and their audit rows the same but for times and ids.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import build_app
from gateway.config import load_config
from gateway.server.protocol import GatewayRunner
from gateway.services import ServiceSettings
from tests.conftest import WriteConfig

RID = "lean-path-test-id"
POLICIES = (
    Path(__file__).resolve().parents[2] / "policies"
)  # sent with every request, so both answers carry it


UPLOADS = web.AppKey("uploads", asyncio.Queue)


async def upstream_app() -> web.Application:
    uploads: asyncio.Queue[str] = asyncio.Queue()

    async def small(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path, "query": request.query_string})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        for part in (b"one ", b"two ", b"three"):
            await response.write(part)
        await response.write_eof()
        return response

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 200_000, content_type="application/octet-stream")

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen = {k: v for k, v in request.headers.items() if k.lower().startswith("x-")}
        return web.json_response({"body": body.decode(), "headers": seen})

    async def nothing(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def unchanged(request: web.Request) -> web.Response:
        return web.Response(status=304, headers={"ETag": '"v1"'})

    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down for maintenance")

    async def upload(request: web.Request) -> web.Response:
        uploads.put_nowait("started")
        try:
            await request.read()
        except BaseException as exc:  # the gateway cut the body short: what the upstream sees
            uploads.put_nowait(type(exc).__name__)
            raise
        uploads.put_nowait("whole")
        return web.Response(text="stored")

    app = web.Application()
    app.router.add_get("/small", small)
    app.router.add_get("/stream", stream)
    app.router.add_get("/big", big)
    app.router.add_post("/echo", echo)
    app.router.add_get("/nothing", nothing)
    app.router.add_get("/unchanged", unchanged)
    app.router.add_get("/failing", failing)
    app.router.add_post("/upload", upload)
    app[UPLOADS] = uploads
    return app


CONFIG = """
server:
  max_body: 1KiB
  cors: {{origins: ["https://app.example"], credentials: true, expose: [X-Request-Id]}}
auth: {{issuer: gateway}}
policies: {policies}
upstreams:
  up: {{targets: ["http://127.0.0.1:{port}"]}}
  gone: {{targets: ["http://127.0.0.1:{closed}"], retries: 0}}
routes:
  - {{path: /p/**, upstream: up, strip_prefix: /p, auth: none}}
  - {{path: /limited/**, upstream: up, strip_prefix: /limited, auth: none,
      rate_limit: {{limit: 1, per: 1h, key: ip}}}}
  - {{path: /secret/**, upstream: up, strip_prefix: /secret, roles: [admin]}}
  - {{path: /gone/**, upstream: gone, auth: none}}
  - {{path: /users/me/**, handler: users}}
"""


@dataclass
class Pair:
    lean: int  # port of the gateway on the lean path
    chain: int  # port of the one with it off
    databases: tuple[Path, Path]
    handled: list[str]  # paths aiohttp.web's handler saw on the lean gateway
    uploads: asyncio.Queue[str]  # the upstream's /upload: "started", then how it ended


@pytest.fixture
async def pair(
    write_config: WriteConfig, sqlite_template: Path, tmp_path: Path, unused_port: int
) -> AsyncIterator[Pair]:
    upstream = TestServer(await upstream_app())
    await upstream.start_server()
    config = load_config(
        write_config(
            CONFIG.format(
                policies=POLICIES,
                port=upstream.port,
                closed=unused_port,
            )
        )
    )
    runners, ports, databases = [], [], []
    handled: list[str] = []
    for lean in (True, False):
        database = tmp_path / f"gateway-{'lean' if lean else 'chain'}.db"
        shutil.copyfile(sqlite_template, database)
        settings = ServiceSettings(database_url=f"sqlite+aiosqlite:///{database}")
        app = build_app(config, settings=settings)
        if lean:
            handle = app._handle

            async def seen(request: web.Request, handle: Any = handle) -> web.StreamResponse:
                handled.append(request.path)
                return await handle(request)

            app._handle = seen  # type: ignore[method-assign]  # aiohttp.web's entry, watched
        runner = GatewayRunner(app, lean=lean, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        databases.append(database)
    try:
        yield Pair(ports[0], ports[1], (databases[0], databases[1]), handled, upstream.app[UPLOADS])
    finally:
        for runner in runners:
            await runner.cleanup()  # the audit writers flush their rows
        await upstream.close()


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def exchange(port: int, raw: bytes, *, responses: int = 1, head: bool = False) -> bytes:
    """Send `raw` on one connection; read `responses` whole answers (framed by their
    Content-Length, chunks, or the connection's end) and return their bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = b""
    try:
        writer.write(raw)
        for _ in range(responses):
            head_bytes = await reader.readuntil(b"\r\n\r\n")
            while head_bytes.startswith(b"HTTP/1.1 100 "):
                out += head_bytes
                head_bytes = await reader.readuntil(b"\r\n\r\n")
            out += head_bytes
            lines = head_bytes.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            fields = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            if head or status in (204, 304):
                continue
            if "content-length" in fields:
                out += await reader.readexactly(int(fields["content-length"]))
            elif fields.get("transfer-encoding") == "chunked":
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    out += size_line
                    size = int(size_line.split(b";")[0], 16)
                    out += await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                out += await reader.read()
    finally:
        writer.close()
    return out


TIMED = (b"ratelimit-reset:", b"retry-after:")  # whole seconds from now: may differ by 1


def comparable(raw: bytes) -> bytes:
    """The answer without its Date headers (the one thing allowed to differ) and with
    the values of the headers counting seconds from now left out (see `seconds`)."""
    lines = []
    for line in raw.split(b"\r\n"):
        lower = line.lower()
        if lower.startswith(b"date:"):
            continue
        lines.append(line.split(b":")[0] if lower.startswith(TIMED) else line)
    return b"\r\n".join(lines)


def seconds(raw: bytes) -> list[int]:
    """The values of the headers counting seconds from now, in order."""
    found = []
    for line in raw.split(b"\r\n"):
        if line.lower().startswith(TIMED):
            found.append(int(line.split(b":")[1]))
    return found


def request(method: str, path: str, *extra: str, body: bytes = b"", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: gateway.test", f"X-Request-Id: {RID}"]
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


CLOSE = "Connection: close"
CASES: dict[str, tuple[bytes, dict[str, Any]]] = {
    "small JSON": (request("GET", "/p/small?a=1&b=%20", CLOSE), {}),
    "HEAD": (request("HEAD", "/p/small", CLOSE), {"head": True}),
    "chunked answer": (request("GET", "/p/stream", CLOSE), {}),
    "chunked answer to HTTP/1.0": (request("GET", "/p/stream", version="1.0"), {}),
    "HTTP/1.0 keep-alive, twice": (
        request("GET", "/p/small", "Connection: keep-alive", version="1.0") * 2,
        {"responses": 2},
    ),
    "keep-alive, pipelined": (
        request("GET", "/p/small") + request("GET", "/p/stream", CLOSE),
        {"responses": 2},
    ),
    "large body of declared length": (request("GET", "/p/big", CLOSE), {}),
    "204": (request("GET", "/p/nothing", CLOSE), {}),
    "304": (request("GET", "/p/unchanged", CLOSE), {}),
    "upstream 503 passed on": (request("GET", "/p/failing", CLOSE), {}),
    "POST with a length": (
        request("POST", "/p/echo", CLOSE, "Content-Length: 5", body=b"hello"),
        {},
    ),
    "POST chunked": (
        request(
            "POST", "/p/echo", CLOSE, "Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\n\r\n"
        ),
        {},
    ),
    "Expect: 100-continue": (
        request("POST", "/p/echo", "Expect: 100-continue", "Content-Length: 2", CLOSE, body=b"hi"),
        {},
    ),
    "unknown expectation: 417": (
        request("POST", "/p/echo", "Expect: teapot", "Content-Length: 2", CLOSE, body=b"hi"),
        {},
    ),
    "body over max_body: 413": (
        request("POST", "/p/echo", CLOSE, "Content-Length: 5000", body=b"y" * 5000),
        {},
    ),
    "no token: 401": (request("GET", "/secret/small", CLOSE), {}),
    "a bad token: 401": (
        request("GET", "/secret/small", CLOSE, "Authorization: Bearer not.a.token"),
        {},
    ),
    "rate limit, then 429": (
        request("GET", "/limited/small") + request("GET", "/limited/small", CLOSE),
        {"responses": 2},
    ),
    "CORS from an allowed origin": (
        request("GET", "/p/small", CLOSE, "Origin: https://app.example"),
        {},
    ),
    "unreachable upstream: 502": (request("GET", "/gone/x", CLOSE), {}),
    "forged identity headers dropped": (
        request("POST", "/p/echo", CLOSE, "X-User-Id: 1", "X_User_Roles: a", "Content-Length: 0"),
        {},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_both_ways_answer_the_same_bytes(pair: Pair, case: str) -> None:
    raw, options = CASES[case]
    lean = await exchange(pair.lean, raw, **options)
    chain = await exchange(pair.chain, raw, **options)
    assert lean.startswith(b"HTTP/1.")
    assert comparable(lean) == comparable(chain)
    for mine, theirs in zip(seconds(lean), seconds(chain), strict=True):
        assert abs(mine - theirs) <= 1  # made a moment apart
    assert b"date:" in lean.lower()  # made by both, at their own second
    proxied = [path for path in pair.handled if not path.startswith("/users/")]
    assert proxied == [], "an upstream route went through aiohttp.web"


async def test_local_routes_stay_on_aiohttp_web(pair: Pair) -> None:
    answer = await exchange(pair.lean, request("GET", "/users/me", CLOSE))
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert pair.handled == ["/users/me"]


async def test_both_ways_write_the_same_audit_rows(pair: Pair) -> None:
    for case in ("small JSON", "chunked answer", "POST chunked", "no token: 401", "204"):
        raw, options = CASES[case]
        await exchange(pair.lean, raw, **options)
        await exchange(pair.chain, raw, **options)
    rows = []
    await flushed(pair, 5)
    for database in pair.databases:
        with sqlite3.connect(database) as db:
            rows.append(
                db.execute(
                    "SELECT method, path, route, upstream, status, client_ip, bytes_in,"
                    " bytes_out, reason FROM audit_logs ORDER BY ts"
                ).fetchall()
            )
    assert len(rows[0]) == 5
    assert rows[0] == rows[1]


async def flushed(pair: Pair, rows: int) -> None:
    """Wait (at most 10 s) until both audit writers have stored `rows` rows."""
    for _ in range(100):
        counts = []
        for database in pair.databases:
            with sqlite3.connect(database) as db:
                counts.append(db.execute("SELECT count(*) FROM audit_logs").fetchone()[0])
        if counts == [rows, rows]:
            return
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("way", ["lean", "chain"])
async def test_a_client_leaving_mid_upload_ends_the_upstream_call(pair: Pair, way: str) -> None:
    """No handler cancellation (as `gateway serve` runs): the body the client will never
    finish must end with its connection, not keep the upstream waiting for its timeout."""
    port = pair.lean if way == "lean" else pair.chain
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request("POST", "/p/upload", "Content-Length: 100", body=b"0123456789"))
    await writer.drain()
    # the gateway has sent the head upstream and waits for the rest of the body
    assert await asyncio.wait_for(pair.uploads.get(), timeout=10) == "started"
    writer.transport.abort()
    ended = await asyncio.wait_for(pair.uploads.get(), timeout=10)
    assert ended != "whole"
