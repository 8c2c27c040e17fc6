"""`gateway serve` as a real process: health endpoints, JSON logs, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import MakeUpstream, WriteConfig
from tests.processes import free_port, start_gateway, stop


def slow_upstream() -> web.Application:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.json_response({"done": True})

    app = web.Application()
    app.router.add_get("/slow", slow)
    return app


def config_text(port: int, grace: str = "10s") -> str:
    return f"""
        server: {{shutdown_grace: {grace}}}
        upstreams:
          up: {{targets: ["http://127.0.0.1:{port}"], timeout: 30s}}
        routes:
          - {{path: /up/**, upstream: up, strip_prefix: /up, auth: none}}
        """


def json_lines(path: Path) -> list[dict[str, object]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line must be one JSON object


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_in_flight_requests_and_exits_0(
    write_config: WriteConfig, upstream: MakeUpstream, tmp_path: Path, signum: signal.Signals
) -> None:
    server = await upstream(slow_upstream())
    assert server.port is not None
    port = free_port()
    log_path = tmp_path / "gateway.log"
    process = start_gateway(write_config(config_text(server.port)), port, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            in_flight = asyncio.ensure_future(session.get(f"{base}/up/slow?s=1"))
            await asyncio.sleep(0.3)  # the request is now inside the gateway
            process.send_signal(signum)
            resp = await in_flight
            assert resp.status == 200
            assert await resp.json() == {"done": True}
            code = await asyncio.to_thread(process.wait, 15)
            assert code == 0
            with pytest.raises(aiohttp.ClientConnectionError):
                await session.get(f"{base}/healthz")  # no longer listening
    finally:
        stop(process)
    entries = json_lines(log_path)
    messages = [e["msg"] for e in entries]
    assert "listening" in messages
    assert "draining" in messages
    assert messages[-1] == "stopped"
    assert all({"ts", "level", "logger", "msg"} <= set(e) for e in entries)


async def test_grace_period_bounds_the_drain(
    write_config: WriteConfig, upstream: MakeUpstream, tmp_path: Path
) -> None:
    server = await upstream(slow_upstream())
    assert server.port is not None
    port = free_port()
    process = start_gateway(write_config(config_text(server.port, grace="1s")), port)
    try:
        async with aiohttp.ClientSession() as session:
            in_flight = asyncio.ensure_future(session.get(f"http://127.0.0.1:{port}/up/slow?s=60"))
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            # exits well before the 60 s request could finish: the grace ended it
            code = await asyncio.to_thread(process.wait, 30)
            assert code == 0
            with pytest.raises(aiohttp.ClientError):
                await (await in_flight).read()  # cut off, never completed
    finally:
        stop(process)


async def test_health_endpoints_of_a_running_gateway(
    write_config: WriteConfig, upstream: MakeUpstream, tmp_path: Path
) -> None:
    server = await upstream(slow_upstream())
    assert server.port is not None
    port = free_port()
    process = start_gateway(write_config(config_text(server.port)), port)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
                assert await resp.json() == {"status": "ok"}
                assert resp.headers["X-Request-Id"]
            async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 200
                body = await resp.json()
                assert body["status"] == "ready"
                assert len(body["config"]["file_hash"]) == 64
    finally:
        stop(process)


def test_serve_refuses_an_invalid_config(write_config: WriteConfig) -> None:
    path = write_config("routes:\n  - {path: /x, upstream: nowhere}\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"{path}:2: " in result.stderr
    assert "undefined upstream 'nowhere'" in result.stderr


async def test_malformed_http_gets_a_problem_with_a_request_id(
    write_config: WriteConfig, upstream: MakeUpstream
) -> None:
    server = await upstream(slow_upstream())
    assert server.port is not None
    port = free_port()
    process = start_gateway(write_config(config_text(server.port)), port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
    finally:
        stop(process)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400"  # aiohttp answers unparsable requests as HTTP/1.0
    assert b"Content-Type: application/problem+json" in head
    assert b"X-Request-Id: " in head
    problem = json.loads(body)
    assert problem["status"] == 400
    assert problem["code"] == "bad_http_request"
