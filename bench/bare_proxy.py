"""The floor under the gateway: an aiohttp reverse proxy with no middleware at all.

`python bench/bare_proxy.py http://127.0.0.1:PORT LISTEN_PORT` forwards every
request to the upstream over one keep-alive ClientSession and streams the body
back, on uvloop, so bench/chain.py can tell what aiohttp costs from what the
chain costs.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
from aiohttp import web
from yarl import URL

# Hop-by-hop headers stay on their own hop; the upstream gets its own Host.
DROP = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"})
DROP_REQUEST = DROP | {"host"}


async def serve(upstream: str, port: int) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=100),  # as the gateway's pool
        auto_decompress=False,
    )

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP_REQUEST}
        body = request.content if request.body_exists else None
        url = URL(upstream + request.raw_path, encoded=True)
        async with session.request(
            request.method, url, headers=headers, data=body, allow_redirects=False
        ) as answer:
            response = web.StreamResponse(status=answer.status, reason=answer.reason)
            response.headers.extend(
                (k, v) for k, v in answer.headers.items() if k.lower() not in DROP
            )
            try:
                await response.prepare(request)
                async for chunk in answer.content.iter_chunked(64 * 1024):
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:
                pass  # the client left mid-answer (wrk stopping): as the gateway, log nothing
            return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)  # the gateway keeps no access log either
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    try:
        await asyncio.Event().wait()  # until the bench stops the process
    finally:
        await session.close()
        await runner.cleanup()


if __name__ == "__main__":
    # uvloop, as the gateway runs when the `fast` extra is installed; no fallback, so
    # that the floor is never measured on the slower default loop by accident.
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop:
        loop.run(serve(sys.argv[1], int(sys.argv[2])))
