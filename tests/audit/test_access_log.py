"""The access log (server.access_log): a JSON line per finished request from a real
`gateway serve`, never a query value or a token, and a reader that stalls never stalls
the gateway (README "Access log")."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from gateway.audit.access import AccessLog
from tests.conftest import MakeUpstream, WriteConfig, echo_app
from tests.identity import CHEAP_HASHING
from tests.processes import create_user, free_port, serve_command, wait_for_port

FIELDS = {
    "ts", "request_id", "client", "method", "path", "status", "bytes_in", "bytes_out",
    "duration_ms", "route", "upstream", "model", "user", "reason",
}  # fmt: skip


def config(upstream_port: int, server: str = "") -> str:
    return f"""
        server: {{{server}}}
        auth: {{issuer: gateway, {CHEAP_HASHING}}}
        upstreams:
          echo: {{targets: ["http://127.0.0.1:{upstream_port}"]}}
        routes:
          - {{path: /auth/login, methods: [POST], handler: auth.login, auth: none}}
          - {{path: /api/**, upstream: echo, strip_prefix: /api}}
        """


def start(path: Path, port: int, out: Path, err: Path) -> subprocess.Popen[bytes]:
    """`gateway serve` with its stdout and stderr in files."""
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        return subprocess.Popen(serve_command(path, port), stdout=stdout, stderr=stderr)


async def serve_and_call(
    path: Path, tmp_path: Path, stream: str
) -> tuple[list[dict[str, Any]], str, bytes]:
    """Serve `path`, log in, make three requests, stop; the JSON lines of `stream`."""
    create_user(path, "ada", "user", "correct horse battery staple")
    port = free_port()
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    process = await asyncio.to_thread(start, path, port, out, err)
    try:
        await asyncio.to_thread(wait_for_port, port, process)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            login = await session.post(
                f"{base}/auth/login",
                json={"username": "ada", "password": "correct horse battery staple"},
                headers={"X-Request-Id": "al-login"},
            )
            token = (await login.json())["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            ok = await session.get(
                f"{base}/api/items?secret=s3cr3t-value",
                headers={**auth, "X-Request-Id": "al-ok"},
            )
            assert ok.status == 200
            denied = await session.get(f"{base}/api/items", headers={"X-Request-Id": "al-401"})
            assert denied.status == 401
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)
    raw = (out if stream == "stdout" else err).read_bytes()
    lines = [orjson.loads(line) for line in raw.splitlines() if line.strip()]
    return [x for x in lines if "bytes_out" in x], token, raw


async def test_one_line_per_request_with_its_fields_and_no_query_value(
    upstream: MakeUpstream, write_config: WriteConfig, tmp_path: Path, policies: Path
) -> None:
    up: TestServer = await upstream(echo_app())
    assert up.port is not None
    started = time.time()
    lines, token, raw = await serve_and_call(write_config(config(up.port)), tmp_path, "stdout")
    by_id = {line["request_id"]: line for line in lines}
    assert set(by_id) == {"al-login", "al-ok", "al-401"}  # one each, nothing else
    ok = by_id["al-ok"]
    assert set(ok) >= FIELDS
    assert "trace_id" not in ok  # tracing is off
    assert (ok["method"], ok["path"], ok["status"], ok["route"]) == (
        "GET",
        "/api/items",
        200,
        "/api/**",
    )
    assert (ok["upstream"], ok["user"], ok["client"], ok["reason"]) == (
        "echo",
        "ada",
        "127.0.0.1",
        None,
    )
    assert ok["bytes_out"] > 0
    assert 0 < ok["duration_ms"] <= (time.time() - started) * 1000
    assert by_id["al-401"]["reason"] == "missing_token"
    assert by_id["al-login"]["route"] == "/auth/login"
    # Never a query value, a token or a password.
    for secret in (b"s3cr3t-value", token.encode(), b"correct horse"):
        assert secret not in raw


async def test_stderr_and_off(
    upstream: MakeUpstream, write_config: WriteConfig, tmp_path: Path, policies: Path
) -> None:
    up: TestServer = await upstream(echo_app())
    assert up.port is not None
    path = write_config(config(up.port, "access_log: stderr"))
    lines, _, _ = await serve_and_call(path, tmp_path, "stderr")
    assert {line["request_id"] for line in lines} == {"al-login", "al-ok", "al-401"}
    for stream in ("stdout", "stderr"):
        quiet = tmp_path / f"quiet-{stream}"
        quiet.mkdir()
        shutil.copytree(policies, quiet / "policies")
        (quiet / "routes.yaml").write_text(config(up.port, "access_log: off"))
        lines, _, _ = await serve_and_call(quiet / "routes.yaml", quiet, stream)
        assert lines == []


async def test_a_reader_that_never_reads_costs_dropped_lines_not_a_stalled_loop() -> None:
    read_end, write_end = os.pipe()  # a pipe nobody reads: the kernel holds 64 KiB at most
    access = AccessLog(write_end, max_backlog=256 * 1024)
    line = b'{"path": "/x"}' + b" " * 1000 + b"\n"
    try:
        for _ in range(2000):  # 2 MB: far more than the pipe and the backlog hold
            access.write(line)
            await asyncio.sleep(0)  # a loop turn; every 64 KiB of lines go to the writer
        assert access.dropped > 0  # the loop went on; the lines beyond the backlog were dropped
        assert os.read(read_end, 100).startswith(b'{"path": "/x"}')  # the first ones went out
    finally:
        os.close(read_end)  # the blocked write fails: the thread ends
        access.close()
        os.close(write_end)
