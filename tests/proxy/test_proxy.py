"""The reverse proxy against real upstream servers: headers, paths, streaming, failures."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import MakeGateway, MakeUpstream

Client = TestClient[web.Request, web.Application]


def upstream_app(state: dict[str, object]) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body_sha": hashlib.sha256(body).hexdigest(),
                "body_len": len(body),
            }
        )

    async def sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        gates: list[asyncio.Event] = state["gates"]  # type: ignore[assignment]
        for i, gate in enumerate(gates):
            await response.write(f"data: event {i}\n\n".encode())
            await gate.wait()  # the next event only once the test saw this one
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.json_response({"late": True})

    async def reset_mid_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = 100_000
        await response.prepare(request)
        await response.write(b"x" * 1000)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return response

    async def sized_body(request: web.Request) -> web.Response:
        return web.Response(body=b"b" * int(request.query["n"]))

    async def reset_mid_small_body(request: web.Request) -> web.StreamResponse:
        # A small body of declared length: the gateway reads it whole before answering.
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b'{"partial": ')
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return response

    async def reset_mid_chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"partial")
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return response

    async def close_early(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    async def hop_headers(request: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.headers["Connection"] = "X-Private"
        response.headers["X-Private"] = "hidden"
        response.headers["Keep-Alive"] = "timeout=5"
        response.headers["X-Public"] = "shown"
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    async def gzipped(request: web.Request) -> web.Response:
        import gzip

        body = gzip.compress(b"hello " * 100)
        return web.Response(
            body=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
        )

    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/sse", sse)
    app.router.add_get("/slow", slow)
    app.router.add_get("/reset", reset_mid_body)
    app.router.add_get("/reset-chunked", reset_mid_chunked)
    app.router.add_get("/reset-small", reset_mid_small_body)
    app.router.add_get("/bytes", sized_body)
    app.router.add_get("/close", close_early)
    app.router.add_get("/hop", hop_headers)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/gzip", gzipped)
    return app


def config_for(port: int, extra_upstream: str = "", server: str = "") -> str:
    return f"""
        server:
          max_body: 1MiB
          {server}
        upstreams:
          up:
            targets: ["http://127.0.0.1:{port}"]
            timeout: 2s
            {extra_upstream}
        routes:
          - path: /api/**
            upstream: up
            strip_prefix: /api
            auth: none
          - path: /raw/**
            upstream: up
            auth: none
        """


@pytest.fixture
async def state() -> dict[str, object]:
    return {"gates": [asyncio.Event() for _ in range(3)]}


@pytest.fixture
async def up_server(upstream: MakeUpstream, state: dict[str, object]) -> TestServer:
    return await upstream(upstream_app(state))


@pytest.fixture
async def client(gateway: MakeGateway, up_server: TestServer) -> Client:
    assert up_server.port is not None
    return await gateway(config_for(up_server.port))


def headers_of(payload: dict[str, object]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in payload["headers"]:  # type: ignore[attr-defined]
        out.setdefault(name.lower(), []).append(value)
    return out


async def test_strip_prefix_and_query_pass_unchanged(client: Client) -> None:
    resp = await client.get("/api/echo/a%25b/c?q=%20x&q=2&empty=")
    assert resp.status == 200
    data = await resp.json()
    assert data["raw_path"] == "/echo/a%25b/c?q=%20x&q=2&empty="


async def test_upstream_gets_the_normalised_path(client: Client) -> None:
    resp = await client.get("/api/x/../echo/./%7Euser//b")
    assert (await resp.json())["raw_path"] == "/echo/~user/b"


async def test_strip_prefix_leaves_at_least_a_slash(client: Client, up_server: TestServer) -> None:
    resp = await client.get("/api")
    # upstream has no route for "/" → its own 404 comes back (not the gateway's)
    assert resp.status == 404
    assert resp.content_type != "application/problem+json"


async def test_without_strip_prefix_the_full_path_is_sent(client: Client) -> None:
    resp = await client.get("/raw/anything")
    assert resp.status == 404  # upstream saw /raw/anything, which it does not serve
    assert "X-Request-Id" in resp.headers


async def test_hop_by_hop_and_connection_named_request_headers_are_dropped(
    client: Client,
) -> None:
    resp = await client.get(
        "/api/echo",
        headers={
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "must not pass",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "Upgrade": "websocket",
            "X-End-To-End": "passes",
        },
    )
    seen = headers_of(await resp.json())
    for name in ("x-secret-hop", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert name not in seen, name
    assert seen["x-end-to-end"] == ["passes"]


async def test_client_sent_identity_headers_are_dropped(client: Client) -> None:
    resp = await client.get(
        "/api/echo", headers={"X-User-Id": "admin", "X-User-Roles": "admin", "x-user-extra": "1"}
    )
    seen = headers_of(await resp.json())
    assert not [name for name in seen if name.startswith("x-user-")]


async def test_forwarding_headers_are_set_and_spoofs_replaced(client: Client) -> None:
    resp = await client.get(
        "/api/echo",
        headers={
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example",
            "Forwarded": "for=6.6.6.6",
            "Host": "front.example:8080",
        },
    )
    seen = headers_of(await resp.json())
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == ["front.example:8080"]
    assert "forwarded" not in seen
    # the target's own Host, not the client's (pass_host is off by default)
    assert seen["host"] != ["front.example:8080"]


async def test_trusted_proxy_chain_is_appended(gateway: MakeGateway, up_server: TestServer) -> None:
    assert up_server.port is not None
    client = await gateway(config_for(up_server.port, server="trusted_proxies: [127.0.0.0/8]"))
    resp = await client.get(
        "/api/echo",
        headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
    )
    seen = headers_of(await resp.json())
    assert seen["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]


async def test_request_id_kept_when_sane_and_replaced_when_not(client: Client) -> None:
    resp = await client.get("/api/echo", headers={"X-Request-Id": "abc-123.x:y_z"})
    assert resp.headers["X-Request-Id"] == "abc-123.x:y_z"
    assert headers_of(await resp.json())["x-request-id"] == ["abc-123.x:y_z"]

    resp = await client.get("/api/echo", headers={"X-Request-Id": "bad id with spaces<>"})
    new_id = resp.headers["X-Request-Id"]
    assert new_id != "bad id with spaces<>"
    assert str(uuid.UUID(new_id)) == new_id  # a UUID (README "The request path"), random: version 4
    assert uuid.UUID(new_id).version == 4
    assert headers_of(await resp.json())["x-request-id"] == [new_id]

    resp = await client.get("/api/echo", headers={"X-Request-Id": "a" * 129})
    assert resp.headers["X-Request-Id"] != "a" * 129


async def test_authorization_is_not_forwarded_unless_configured(
    gateway: MakeGateway, up_server: TestServer
) -> None:
    assert up_server.port is not None
    plain = await gateway(config_for(up_server.port))
    seen = headers_of(await (await plain.get("/api/echo", headers={"Authorization": "x"})).json())
    assert "authorization" not in seen

    forwarding = await gateway(config_for(up_server.port, "forward_authorization: true"))
    resp = await forwarding.get("/api/echo", headers={"Authorization": "Bearer t"})
    assert headers_of(await resp.json())["authorization"] == ["Bearer t"]


async def test_response_hop_by_hop_dropped_and_repeated_headers_kept(client: Client) -> None:
    resp = await client.get("/api/hop")
    assert resp.status == 200
    assert "X-Private" not in resp.headers
    assert "Keep-Alive" not in resp.headers
    assert resp.headers["X-Public"] == "shown"
    assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2"]


async def test_redirects_are_passed_to_the_client(client: Client) -> None:
    resp = await client.get("/api/redirect", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/elsewhere"


async def test_compressed_bodies_pass_untouched(client: Client) -> None:
    resp = await client.get("/api/gzip", auto_decompress=False)
    assert resp.headers["Content-Encoding"] == "gzip"
    import gzip

    assert gzip.decompress(await resp.read()) == b"hello " * 100


async def test_head_request(client: Client) -> None:
    resp = await client.head("/api/echo")
    assert resp.status == 200
    assert await resp.read() == b""


async def test_request_body_streams_with_and_without_length(client: Client) -> None:
    payload = bytes(range(256)) * 2000  # 512 KB
    resp = await client.post("/api/echo", data=payload)
    data = await resp.json()
    assert data["body_len"] == len(payload)
    assert data["body_sha"] == hashlib.sha256(payload).hexdigest()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 10_000):
            yield payload[i : i + 10_000]

    resp = await client.post("/api/echo", data=chunks())
    data = await resp.json()
    assert data["body_len"] == len(payload)
    assert data["body_sha"] == hashlib.sha256(payload).hexdigest()


async def test_body_over_max_body_by_content_length_is_413(client: Client) -> None:
    resp = await client.post("/api/echo", data=b"x" * (1024 * 1024 + 1))
    assert resp.status == 413
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == "body_too_large"


async def test_chunked_body_over_max_body_is_413_while_streaming(client: Client) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"y" * 64 * 1024  # 2.5 MiB in all, over the 1 MiB limit

    resp = await client.post("/api/echo", data=chunks())
    assert resp.status == 413
    assert (await resp.json())["code"] == "body_too_large"


async def test_sse_events_arrive_one_by_one(client: Client, state: dict[str, object]) -> None:
    gates: list[asyncio.Event] = state["gates"]  # type: ignore[assignment]
    resp = await client.get("/api/sse")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    for i, gate in enumerate(gates):
        # The upstream has not finished (it waits on the gate), yet event i is here.
        line = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=5)
        assert line == f"data: event {i}\n\n".encode()
        gate.set()
    assert await resp.read() == b""


async def test_connect_failure_is_502(gateway: MakeGateway, unused_tcp_port: int) -> None:
    client = await gateway(config_for(unused_tcp_port))
    resp = await client.get("/api/anything")
    assert resp.status == 502
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["code"] == "upstream_unreachable"
    assert body["request_id"] == resp.headers["X-Request-Id"]


async def test_timeout_is_504(client: Client) -> None:
    resp = await client.get("/api/slow?s=5")  # upstream timeout is 2s
    assert resp.status == 504
    assert (await resp.json())["code"] == "upstream_timeout"


async def test_first_byte_timeout_is_504(gateway: MakeGateway, up_server: TestServer) -> None:
    assert up_server.port is not None
    client = await gateway(config_for(up_server.port, "first_byte_timeout: 200ms"))
    resp = await client.get("/api/slow?s=1")
    assert resp.status == 504


async def test_upstream_closing_before_a_response_is_502(client: Client) -> None:
    resp = await client.get("/api/close")
    assert resp.status == 502
    assert (await resp.json())["code"] == "upstream_reset"


@pytest.mark.parametrize("path", ["/api/reset", "/api/reset-chunked"])
async def test_reset_mid_response_closes_the_client_connection(client: Client, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200  # headers were already on their way
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()  # never presented as a complete body


async def test_a_small_body_cut_short_is_a_clean_502(client: Client) -> None:
    # Up to 64 KiB of declared length is read whole before anything is sent, so a
    # break is still answered properly instead of cutting the client off.
    resp = await client.get("/api/reset-small")
    assert resp.status == 502
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == "upstream_reset"


async def test_small_and_large_bodies_arrive_whole(client: Client) -> None:
    for size in (0, 1, 65_536, 65_537, 300_000):
        resp = await client.get(f"/api/bytes?n={size}")
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(size)
        assert await resp.read() == b"b" * size


async def test_every_problem_carries_the_request_id(client: Client) -> None:
    resp = await client.get("/nowhere", headers={"X-Request-Id": "trace-1"})
    assert resp.status == 404
    assert resp.headers["X-Request-Id"] == "trace-1"
    assert (await resp.json())["request_id"] == "trace-1"
