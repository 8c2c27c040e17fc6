"""The proxy's upstream connections (gateway/proxy/lean.py), seen from a real upstream:
kept alive and reused, bounded by max_connections, never reused after an
exchange that did not end cleanly."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from tests.conftest import MakeGateway, MakeUpstream
from tests.identity import Client


class Peers:
    """An upstream that records the client port of each request's connection."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.in_flight = 0
        self.most = 0
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.ports.append(peer[1] if peer else -1)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            if request.path == "/slow":
                await asyncio.sleep(0.2)
            if request.path == "/early":
                # Answers before reading the body, then the server closes the connection.
                return web.json_response({"early": True}, status=413)
            if request.path == "/chunked":
                response = web.StreamResponse()
                response.enable_chunked_encoding()
                await response.prepare(request)
                for part in (b"one ", b"two ", b"three"):
                    await response.write(part)
                await response.write_eof()
                return response
            await request.read()
            return web.json_response({"path": request.path})
        finally:
            self.in_flight -= 1


async def through_gateway(
    gateway: MakeGateway, upstream: MakeUpstream, extra: str = ""
) -> tuple[Peers, Client]:
    """A Peers upstream and a gateway routing /u/** to it (`extra`: upstream settings)."""
    peers = Peers()
    server = await upstream(peers.app)
    assert server.port is not None
    return peers, await gateway(config(server.port, extra))


def config(port: int, extra: str = "") -> str:
    return (
        f'upstreams:\n  up: {{targets: ["http://127.0.0.1:{port}"]{extra}}}\n'
        "routes:\n  - {path: /u/**, upstream: up, strip_prefix: /u, auth: none}\n"
    )


async def test_sequential_requests_share_one_connection(
    gateway: MakeGateway, upstream: MakeUpstream, policies: Path
) -> None:
    peers, client = await through_gateway(gateway, upstream)
    for i in range(20):
        response = await client.get(f"/u/item/{i}")
        assert response.status == 200
        assert (await response.json())["path"] == f"/item/{i}"
    head = await client.head("/u/item/x")
    assert head.status == 200
    assert await head.read() == b""
    assert len(set(peers.ports)) == 1, peers.ports


async def test_max_connections_bounds_what_is_open(
    gateway: MakeGateway, upstream: MakeUpstream, policies: Path
) -> None:
    peers, client = await through_gateway(gateway, upstream, ", max_connections: 2")
    responses = await asyncio.gather(*(client.get("/u/slow") for _ in range(8)))
    assert [r.status for r in responses] == [200] * 8
    assert peers.most == 2
    assert len(set(peers.ports)) == 2


async def test_an_early_answer_is_relayed_and_its_connection_not_reused(
    gateway: MakeGateway, upstream: MakeUpstream, policies: Path
) -> None:
    peers, client = await through_gateway(gateway, upstream)

    async def body() -> object:
        for _ in range(64):
            yield b"x" * 65536
            await asyncio.sleep(0)

    early = await client.post("/u/early", data=body())
    assert early.status == 413
    assert await early.json() == {"early": True}
    after = await client.get("/u/after")
    assert after.status == 200
    assert peers.ports[0] != peers.ports[1]  # a fresh connection for the next request


async def test_a_chunked_answer_is_relayed_whole(
    gateway: MakeGateway, upstream: MakeUpstream, policies: Path
) -> None:
    peers, client = await through_gateway(gateway, upstream)
    for _ in range(3):
        response = await client.get("/u/chunked")
        assert response.status == 200
        assert await response.read() == b"one two three"
    assert len(set(peers.ports)) == 1  # a chunked body read to its end: reused
