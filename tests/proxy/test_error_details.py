"""A broken upstream's problem tells the client what failed, never where or in whose words:
no address, no OS or TLS library text, no exception; the log line of the request has them.

Against a real `gateway serve`: an upstream that refuses connections, one that answers
garbage, one whose certificate nobody trusts, and one too slow."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.security import certs
from gateway.tls.server import server_context
from tests.conftest import WriteConfig
from tests.processes import free_port, start_gateway, stop
from tests.rawupstream import INVALID_ANSWERS, RawUpstream, Reply

# What a detail must never hold: an address, a port, the TLS library's or the OS's words.
LEAKS = re.compile(
    r"127\.0\.0\.1|localhost|https?://|:\d{2,5}\b|ssl|certificate|errno|\[Errno|"
    r"Connect call failed|Connection refused|Error\b|Exception",
    re.IGNORECASE,
)


def log_lines(path: Path) -> list[dict[str, object]]:
    complete = path.read_text().rpartition("\n")[0] if path.exists() else ""
    return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]


def wait_for_line(path: Path, request_id: str, message: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for entry in log_lines(path):
            if entry.get("msg") == message and entry.get("request_id") == request_id:
                return entry
        time.sleep(0.05)
    raise AssertionError(f"no {message!r} line for request {request_id}")


@pytest.fixture
def started() -> Iterator[list[object]]:
    processes: list[object] = []
    yield processes
    for process in processes:
        stop(process)  # type: ignore[arg-type]


async def test_upstream_failures_keep_addresses_and_library_text_in_the_log(
    write_config: WriteConfig,
    tmp_path: Path,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    started: list[object],
) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    slow_app = web.Application()
    slow_app.router.add_get("/{tail:.*}", slow)
    slow_server = await aiohttp_server(slow_app)
    made = certs.dev_certs(tmp_path / "untrusted")  # a CA the gateway has never heard of

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    ok_app = web.Application()
    ok_app.router.add_get("/{tail:.*}", ok)
    tls_server = await aiohttp_server(ok_app, ssl=server_context(made.server_cert, made.server_key))
    refused_port = free_port()  # nothing listens there
    async with RawUpstream(Reply(INVALID_ANSWERS["garbage"], close=False)) as raw:
        port = free_port()
        config = write_config(
            f"""
            upstreams:
              refused: {{targets: ["http://127.0.0.1:{refused_port}"], retries: 0}}
              garbage: {{targets: ["{raw.url}"]}}
              untrusted: {{targets: ["https://127.0.0.1:{tls_server.port}"], retries: 0}}
              slow: {{targets: ["http://127.0.0.1:{slow_server.port}"], timeout: 1s}}
            routes:
              - {{path: /refused/**, upstream: refused, auth: none}}
              - {{path: /garbage/**, upstream: garbage, auth: none}}
              - {{path: /untrusted/**, upstream: untrusted, auth: none}}
              - {{path: /slow/**, upstream: slow, auth: none}}
            """
        )
        log = tmp_path / "gateway.log"
        started.append(start_gateway(config, port, log))
        cases = {
            # path: (status, code, what the log line's error says)
            "/refused/x": (502, "upstream_unreachable", str(refused_port)),
            "/garbage/x": (502, "upstream_invalid", "InvalidResponse"),
            "/untrusted/x": (502, "upstream_unreachable", "CERTIFICATE_VERIFY_FAILED"),
            "/slow/x": (504, "upstream_timeout", "Timeout"),
        }
        async with aiohttp.ClientSession() as session:
            for path, (status, code, logged) in cases.items():
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    problem = await response.json(content_type=None)
                    request_id = response.headers["X-Request-Id"]
                assert (response.status, problem["code"]) == (status, code), path
                leak = LEAKS.search(json.dumps(problem))
                assert leak is None, f"{path}: {leak.group()!r} in {problem}"
                line = wait_for_line(log, request_id, "upstream failed")
                assert line["code"] == code
                assert logged in str(line["error"]) + str(line["target"]), (path, line)
                assert str(line["target"]).startswith(("http://127.0.0.1:", "https://127.0.0.1:"))
