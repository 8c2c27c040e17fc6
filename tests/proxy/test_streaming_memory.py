"""Bodies stream through the gateway process with bounded memory (200 MiB each way)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
import pytest
from aiohttp import web

from tests.conftest import MakeUpstream, WriteConfig
from tests.processes import free_port, start_gateway, stop

MiB = 1024 * 1024
TOTAL = 200 * MiB
CHUNK = b"\xab" * (256 * 1024)


class PeakRss:
    """Samples a process's RSS from a thread, so the event loop's work does not skew it."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def big_upstream() -> web.Application:
    async def sink(request: web.Request) -> web.Response:
        received = 0
        async for chunk in request.content.iter_any():
            received += len(chunk)
        return web.json_response({"received": received})

    async def source(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = TOTAL
        await response.prepare(request)
        for _ in range(TOTAL // len(CHUNK)):
            await response.write(CHUNK)
        await response.write_eof()
        return response

    app = web.Application(client_max_size=2 * TOTAL)
    app.router.add_post("/sink", sink)
    app.router.add_get("/source", source)
    return app


@pytest.mark.slow
async def test_200_mib_each_way_with_flat_memory(
    write_config: WriteConfig, upstream: MakeUpstream, tmp_path: Path
) -> None:
    server = await upstream(big_upstream())
    config = write_config(
        f"""
        server: {{max_body: 1GiB}}
        upstreams:
          big: {{targets: ["http://127.0.0.1:{server.port}"], timeout: 2m}}
        routes:
          - {{path: /big/**, upstream: big, strip_prefix: /big, auth: none}}
        """
    )
    port = free_port()
    process = start_gateway(config, port, tmp_path / "gateway.log")
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            # warm up: the pools, parsers and buffers exist before the baseline
            async with session.get(f"{base}/big/nowhere") as resp:
                await resp.read()
            baseline = psutil.Process(process.pid).memory_info().rss

            async def upload() -> AsyncIterator[bytes]:
                for _ in range(TOTAL // len(CHUNK)):
                    yield CHUNK

            with PeakRss(process.pid) as upload_rss:
                async with session.post(f"{base}/big/sink", data=upload()) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["received"] == TOTAL

            downloaded = 0
            with PeakRss(process.pid) as download_rss:
                async with session.get(f"{base}/big/source") as resp:
                    assert resp.status == 200
                    async for chunk in resp.content.iter_any():
                        downloaded += len(chunk)
            assert downloaded == TOTAL
    finally:
        stop(process)

    growth = max(upload_rss.peak, download_rss.peak) - baseline
    print(f"baseline {baseline / MiB:.1f} MiB, growth {growth / MiB:.1f} MiB")
    assert growth < 50 * MiB, f"gateway RSS grew by {growth / MiB:.1f} MiB"
