"""SIGKILL under load: every request a client got a whole answer to has exactly one audit row.

A real `gateway serve` (SQLite, and PostgreSQL when configured) proxies to a
real upstream on loopback. A client sends a few thousand mixed requests, many
at once, each with its own X-Request-Id: small proxied answers, chunked
streamed ones, a large body of declared length, local 404s, 401s and 200s.
Mid-load the gateway is SIGKILLed. Its writer's batch is larger than the
requests sent before the kill and its interval an hour, so no answered
request has a row in the database at that moment (checked): only the
journal has them (a kill between batches is this, for the rows since the
last one). The gateway is started
again (the replay is done before it listens), stopped with SIGTERM, and then
every completely answered request id has exactly one row, no request id has
two, and no journal is left. The journal of the killed process, copied aside
before the restart, is put back and replayed once more: nothing doubles.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import func, select

from gateway.audit.journal import SUFFIX
from gateway.store.engine import make_engine
from models import AuditLog
from tests.conftest import MakeUpstream, WriteConfig
from tests.processes import free_port, start_gateway, stop

TOTAL = 3000  # requests the client means to send
KILL_AFTER = 1500  # complete answers before the SIGKILL
CONCURRENCY = 48
SMALL = b'{"ok":true}'
CHUNK = b"c" * 700
CHUNKS = 6
LARGE = b"L" * 150_000  # more than the proxy's small-body threshold: streamed


def upstream_app() -> web.Application:
    async def small(request: web.Request) -> web.Response:
        return web.Response(body=SMALL, content_type="application/json")

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # no Content-Length: chunked to the gateway and on
        await response.prepare(request)
        for _ in range(CHUNKS):
            await response.write(CHUNK)
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=LARGE, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/small", small)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/large", large)
    return app


Check = Callable[[int, bytes], bool]


def problem(status: int) -> Check:
    def check(got: int, body: bytes) -> bool:
        return got == status and orjson.loads(body)["status"] == status

    return check


# (path, what a complete answer is): proxied small, chunked, large; local 404, 401, 200
MIX: list[tuple[str, Check]] = [
    ("/up/small", lambda status, body: status == 200 and body == SMALL),
    ("/up/chunked", lambda status, body: status == 200 and body == CHUNK * CHUNKS),
    ("/up/large", lambda status, body: status == 200 and body == LARGE),
    ("/nothing/here", problem(404)),
    ("/private/x", problem(401)),
    ("/healthz", lambda status, body: status == 200),
]


async def load(port: int, kill: Callable[[], None]) -> set[str]:
    """Send TOTAL requests, CONCURRENCY at a time; call `kill` after KILL_AFTER complete
    answers. Returns the ids of the requests answered completely (status and whole body)."""
    complete: set[str] = set()
    numbers = iter(range(TOTAL))
    killed = False
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            nonlocal killed
            for n in numbers:
                if killed:
                    return
                path, check = MIX[n % len(MIX)]
                request_id = f"k-{n}"
                try:
                    async with session.get(
                        f"http://127.0.0.1:{port}{path}", headers={"X-Request-Id": request_id}
                    ) as resp:
                        body = await resp.read()  # a cut body raises: not complete
                        if check(resp.status, body):
                            complete.add(request_id)
                except (aiohttp.ClientError, OSError, ValueError):
                    continue  # no complete answer (the gateway was killed)
                if len(complete) >= KILL_AFTER and not killed:
                    killed = True
                    kill()

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    assert killed, "the load ended before the kill"
    return complete


async def request_counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            query = select(AuditLog.request_id, func.count()).group_by(AuditLog.request_id)
            return {rid: count for rid, count in (await connection.execute(query)).all()}
    finally:
        await engine.dispose()


def journal_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*" + SUFFIX))


def assert_private(folder: Path) -> None:
    """The journal folder is 0700 and every file in it 0600."""
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = list(folder.iterdir())
    assert files
    assert {stat.S_IMODE(path.stat().st_mode) for path in files} == {0o600}


def errors(log: Path) -> list[str]:
    """The messages the gateway logged at ERROR (its stderr: JSON lines)."""
    entries = [orjson.loads(line) for line in log.read_bytes().splitlines() if line.strip()]
    return [entry["msg"] for entry in entries if entry.get("level") == "error"]


def sigterm(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0


@pytest.fixture
async def up(upstream: MakeUpstream) -> TestServer:
    return await upstream(upstream_app())


async def test_sigkill_under_load_loses_no_row_of_an_answered_request(
    write_config: WriteConfig,
    database_url: str,
    tmp_path: Path,
    up: TestServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", database_url)
    config = write_config(
        f"""
        routes:
          - {{path: /up/**, upstream: up, strip_prefix: /up, auth: none}}
          - {{path: /private/**, upstream: up}}
        upstreams:
          up: {{targets: ["http://127.0.0.1:{up.port}"]}}
        audit: {{flush_interval: 1h, batch_size: 5000}}
        """
    )
    folder = tmp_path / "audit.journal"
    port = free_port()
    process = start_gateway(config, port, tmp_path / "first.log")
    try:

        def kill() -> None:
            assert_private(folder)  # while it serves, its journal is private
            process.kill()

        complete = await load(port, kill)
        assert process.wait(10) == -signal.SIGKILL
    finally:
        stop(process)

    assert len(complete) >= KILL_AFTER
    assert await request_counts(database_url) == {}  # every row was still in memory
    aside = tmp_path / "killed-journal"
    shutil.copytree(folder, aside)  # to replay the same journal a second time

    counts: dict[str, int] = {}
    for attempt in range(2):
        again = start_gateway(config, free_port(), tmp_path / f"restart-{attempt}.log")
        try:
            sigterm(again)  # the replay happened before it listened
        finally:
            stop(again)
        assert journal_files(folder) == []  # a clean stop leaves nothing to replay
        # rows stored already are skipped quietly, not refused one by one and dropped
        assert errors(tmp_path / f"restart-{attempt}.log") == []
        after = await request_counts(database_url)
        assert {rid for rid in complete if after.get(rid) != 1} == set()
        assert {rid: n for rid, n in after.items() if n > 1} == {}  # nothing twice
        if attempt == 0:
            counts = after
            for path in journal_files(aside):
                shutil.copyfile(path, folder / path.name)
        else:
            assert after == counts  # the same journal replayed again added nothing
    assert set(counts) <= {f"k-{n}" for n in range(TOTAL)}  # no row of anything else
