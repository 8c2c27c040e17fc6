"""Protocol strictness of a real `gateway serve`, over raw sockets: `Expect: 100-continue` is
answered only once the chain lets the request through, and HTTP versions other than 1.0/1.1
get 505 (HTTP/0.9: the connection is closed)."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from tests.identity import CHEAP_HASHING, PASSWORD
from tests.processes import REPO, create_user, free_port, start_gateway, stop

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ThreadedUpstream:
    """An upstream on its own event loop in a thread, for a module's one gateway.
    It answers with what it received: the body's length and its Expect header."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedUpstream:
        async def echo(request: web.Request) -> web.Response:
            body = await request.read()
            return web.json_response({"body": len(body), "expect": request.headers.get("Expect")})

        async def start() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", echo)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self._thread.start()
        asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@dataclass(frozen=True)
class Gateway:
    port: int
    token: str


def config_text(port: int, upstream_port: int) -> str:
    return f"""
server:
  listen: 127.0.0.1:{port}
  max_body: 1KiB
auth:
  {CHEAP_HASHING}
policies: policies/
upstreams:
  up: {{targets: ["http://127.0.0.1:{upstream_port}"]}}
routes:
  - {{path: /auth/login, methods: [POST], handler: auth.login, auth: none}}
  - {{path: /closed/**, upstream: up, strip_prefix: /closed}}
  - {{path: /admins/**, upstream: up, strip_prefix: /admins, roles: [admin]}}
  - {{path: /limited/**, upstream: up, strip_prefix: /limited, auth: none,
      rate_limit: {{limit: 1, per: 1h, key: ip}}}}
  - {{path: /open/**, upstream: up, strip_prefix: /open, auth: none}}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway for the module (each test uses its own route or connection)."""
    folder = tmp_path_factory.mktemp("strict")
    shutil.copytree(REPO / "policies", folder / "policies")
    port = free_port()
    with ThreadedUpstream() as upstream:
        config = folder / "routes.yaml"
        config.write_text(config_text(port, upstream.port))
        create_user(config, "alice", "user", PASSWORD)
        process = start_gateway(config, port, folder / "gateway.log")
        try:
            client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            credentials = {"username": "alice", "password": PASSWORD}
            client.request(
                "POST",
                "/auth/login",
                json.dumps(credentials),
                {"Content-Type": "application/json"},
            )
            token = json.loads(client.getresponse().read())["access_token"]
            client.close()
            yield Gateway(port, token)
        finally:
            stop(process)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(5)
    return sock


def read_to_close(sock: socket.socket, seconds: float = 5.0) -> tuple[bytes, bool]:
    """What the server sends until it closes (True) or `seconds` pass (False)."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    except ConnectionResetError:
        pass
    return data, True


def read_head(sock: socket.socket) -> bytes:
    """Bytes up to and including the first blank line (one response head)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    head = read_head(sock)
    found = re.search(rb"(?i)\r\ncontent-length: *([0-9]+)", head)
    assert found is not None, head
    body = b""
    while len(body) < int(found.group(1)):
        body += sock.recv(65536)
    return head, body


def expecting(path: str, length: int, token: str | None = None, version: str = "1.1") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/{version}\r\nHost: gw\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()


# --- Expect: 100-continue ----------------------------------------------------------


def test_expect_without_a_token_gets_401_at_once_and_never_a_100(gateway: Gateway) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(expecting("/closed/upload", 10))
        data, closed = read_to_close(sock)  # the body is never sent
    assert data.startswith(b"HTTP/1.1 401 ")
    assert b"100 Continue" not in data
    assert closed  # the body it held back is not waited for


def test_expect_refused_by_policy_gets_403_without_a_100(gateway: Gateway) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(expecting("/admins/upload", 10, gateway.token))
        data, closed = read_to_close(sock)
    assert data.startswith(b"HTTP/1.1 403 ")
    assert b"100 Continue" not in data
    assert closed


def test_expect_allowed_gets_100_then_the_body_goes_upstream(gateway: Gateway) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(expecting("/closed/upload", 10, gateway.token))
        assert read_head(sock) == CONTINUE  # nothing of the body was sent yet
        sock.sendall(b'{"a": 123}')
        head, body = read_response(sock)
        assert head.startswith(b"HTTP/1.1 200 ")
        # The upstream got the whole body, and no Expect: the gateway answered it.
        assert json.loads(body) == {"body": 10, "expect": None}
        sock.sendall(b"GET /open/again HTTP/1.1\r\nHost: gw\r\n\r\n")  # still keep-alive
        assert read_response(sock)[0].startswith(b"HTTP/1.1 200 ")


def test_expect_with_a_length_over_max_body_gets_413_without_a_100(gateway: Gateway) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(expecting("/closed/upload", 4096, gateway.token))
        data, closed = read_to_close(sock)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b'"code":"body_too_large"' in data
    assert b"100 Continue" not in data
    assert closed


def test_expect_when_rate_limited_gets_429_without_a_100(gateway: Gateway) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(expecting("/limited/upload", 2))
        assert read_head(sock) == CONTINUE  # the one request the limit allows
        sock.sendall(b"{}")
        assert read_response(sock)[0].startswith(b"HTTP/1.1 200 ")
    with connect(gateway.port) as sock:
        sock.sendall(expecting("/limited/upload", 2))
        data, closed = read_to_close(sock)
    assert data.startswith(b"HTTP/1.1 429 ")
    assert b"100 Continue" not in data
    assert closed


def test_an_unknown_expectation_gets_417(gateway: Gateway) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(
            b"POST /open/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n"
            b"Expect: something-else\r\n\r\n"
        )
        data, closed = read_to_close(sock)
    assert data.startswith(b"HTTP/1.1 417 ")
    assert b'"code":"expectation_failed"' in data
    assert closed


def test_expect_in_http_1_0_is_ignored(gateway: Gateway) -> None:
    # RFC 9110 §10.1.1: an HTTP/1.0 client does not wait for a 100 and gets none.
    with connect(gateway.port) as sock:
        sock.sendall(expecting("/open/upload", 2, version="1.0") + b"{}")
        data, _ = read_to_close(sock)
    assert data.startswith(b"HTTP/1.0 200 ")
    assert b"100 Continue" not in data


# --- HTTP versions -----------------------------------------------------------------


@pytest.mark.parametrize("version", ["HTTP/1.2", "HTTP/2.0", "HTTP/3.0", "HTTP/2"])
def test_other_versions_get_505_and_the_connection_closes(gateway: Gateway, version: str) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(f"GET /healthz {version}\r\nHost: gw\r\n\r\n".encode())
        data, closed = read_to_close(sock)
    assert data.startswith(b"HTTP/1.1 505 ")
    assert b'"code":"http_version_not_supported"' in data
    assert b"application/problem+json" in data
    assert closed


def test_a_request_line_without_a_version_is_closed_without_an_answer(gateway: Gateway) -> None:
    # HTTP/0.9: `GET /path` and nothing else; such a client cannot read a status line.
    with connect(gateway.port) as sock:
        sock.sendall(b"GET /healthz\r\n")
        data, closed = read_to_close(sock)
    assert closed
    assert data == b""


def test_a_pipelined_request_of_another_version_gets_505_after_the_first(
    gateway: Gateway,
) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\nGET /healthz HTTP/2.0\r\nHost: gw\r\n\r\n"
        )
        data, closed = read_to_close(sock)
    first, _, rest = data.partition(b'{"status":"ok"}')
    assert first.startswith(b"HTTP/1.1 200 ")
    assert b" 505 " in rest.split(b"\r\n", 1)[0]
    assert b'"code":"http_version_not_supported"' in rest
    assert closed


@pytest.mark.parametrize("version", ["HTTP/1.0", "HTTP/1.1"])
def test_http_1_0_and_1_1_are_served(gateway: Gateway, version: str) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(f"GET /healthz {version}\r\nHost: gw\r\nConnection: close\r\n\r\n".encode())
        data, _ = read_to_close(sock)
    assert data.startswith(f"{version} 200 ".encode())  # answered in the client's version
