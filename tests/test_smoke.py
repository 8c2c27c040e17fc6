from __future__ import annotations

from aiohttp import web

from tests.conftest import MakeGateway, MakeUpstream


async def test_proxies_to_upstream(gateway: MakeGateway, upstream: MakeUpstream) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path_qs})

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    server = await upstream(app)
    client = await gateway(
        f"""
        upstreams:
          up: {{targets: ["http://127.0.0.1:{server.port}"]}}
        routes:
          - path: /api/**
            upstream: up
            strip_prefix: /api
            auth: none
        """
    )
    resp = await client.get("/api/x?y=1")
    assert resp.status == 200
    assert await resp.json() == {"path": "/x?y=1"}
