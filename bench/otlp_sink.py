"""An OTLP/HTTP traces endpoint that accepts and drops every batch, for benches of the
gateway's tracing cost (bench/README.md "tracing"): `python bench/otlp_sink.py PORT`."""

from __future__ import annotations

import sys

from aiohttp import web


async def traces(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")


if __name__ == "__main__":
    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
