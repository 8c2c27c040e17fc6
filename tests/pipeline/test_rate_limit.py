"""Rate limits through the real chain: headers, keys, spoofing, models, Redis shared and down."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import MakeGateway, MakeUpstream
from tests.identity import CHEAP_HASHING, Client, bearer, login, make_user
from tests.processes import free_port


def echo_upstream() -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        if request.path == "/stream":
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"data: 1\n\n")
            await response.write_eof()
            return response
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def echo(upstream: MakeUpstream) -> TestServer:
    return await upstream(echo_upstream())


def limits_config(port: int, server: str = "") -> str:
    return f"""
server:
  trusted_proxies: [10.0.0.0/8]
  {server}
auth:
  {CHEAP_HASHING}
policies: policies/
upstreams:
  echo: {{targets: ["http://127.0.0.1:{port}"]}}
models:
  tiny: {{url: "http://127.0.0.1:{port}", rate_limit: 2/min}}
routes:
  - {{path: /auth/login, methods: [POST], handler: auth.login, auth: none}}
  - {{path: /by-ip/**, upstream: echo, strip_prefix: /by-ip, auth: none,
      rate_limit: {{limit: 3, per: 1m, key: ip}}}}
  - {{path: /by-user/**, upstream: echo, strip_prefix: /by-user, rate_limit: 2/min}}
  - {{path: /by-route/**, upstream: echo, strip_prefix: /by-route, auth: none,
      rate_limit: {{limit: 2, per: 1m, key: route}}}}
  - {{path: /by-header/**, upstream: echo, strip_prefix: /by-header, auth: none,
      rate_limit: {{limit: 1, per: 1m, key: "header:X-Api-Key"}}}}
  - {{path: /free/**, upstream: echo, strip_prefix: /free, auth: none}}
"""


@pytest.fixture
async def client(gateway: MakeGateway, policies: Path, echo: TestServer) -> Client:
    assert echo.port is not None
    return await gateway(limits_config(echo.port))


async def test_limited_routes_carry_ratelimit_headers_and_429_says_when(client: Client) -> None:
    seen = []
    for _ in range(3):
        resp = await client.get("/by-ip/x")
        assert resp.status == 200
        assert resp.headers["RateLimit-Limit"] == "3"
        seen.append(int(resp.headers["RateLimit-Remaining"]))
        assert int(resp.headers["RateLimit-Reset"]) > 0
    assert seen == [2, 1, 0]
    refused = await client.get("/by-ip/x")
    assert refused.status == 429
    assert refused.content_type == "application/problem+json"
    body = await refused.json()
    assert body["code"] == "rate_limited"
    assert "/by-ip/**" in body["detail"]  # names the bucket
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Remaining"] == "0"
    free = await client.get("/free/x")
    assert free.status == 200
    assert "RateLimit-Limit" not in free.headers


async def test_streamed_responses_carry_the_headers_too(client: Client) -> None:
    resp = await client.get("/by-ip/stream")
    assert resp.status == 200
    assert resp.headers["RateLimit-Limit"] == "3"
    assert await resp.read() == b"data: 1\n\n"


async def test_spoofed_forwarded_for_from_an_untrusted_peer_does_not_dodge(client: Client) -> None:
    statuses = []
    for i in range(5):
        resp = await client.get("/by-ip/x", headers={"X-Forwarded-For": f"198.51.100.{i}"})
        statuses.append(resp.status)
    assert statuses == [200, 200, 200, 429, 429]


async def test_forwarded_for_from_a_trusted_proxy_is_believed(
    gateway: MakeGateway, policies: Path, echo: TestServer
) -> None:
    assert echo.port is not None
    client = await gateway(
        limits_config(echo.port).replace(
            "trusted_proxies: [10.0.0.0/8]", "trusted_proxies: [127.0.0.1]"
        )
    )
    for i in range(3):
        resp = await client.get("/by-ip/x", headers={"X-Forwarded-For": "203.0.113.1"})
        assert resp.status == 200, i
    assert (await client.get("/by-ip/x", headers={"X-Forwarded-For": "203.0.113.1"})).status == 429
    # another client behind the same proxy has a bucket of its own
    assert (await client.get("/by-ip/x", headers={"X-Forwarded-For": "203.0.113.2"})).status == 200


async def test_the_client_is_the_rightmost_hop_that_is_no_trusted_proxy(
    gateway: MakeGateway, policies: Path, echo: TestServer
) -> None:
    """Behind the peer and a proxy of 10.0.0.0/8 (written IPv4-mapped, as a dual-stack
    proxy does), the client is the right-most untrusted address; whatever the client
    wrote left of it is its own invention and does not give it a new bucket."""
    assert echo.port is not None
    client = await gateway(
        limits_config(echo.port).replace(
            "trusted_proxies: [10.0.0.0/8]", "trusted_proxies: [10.0.0.0/8, 127.0.0.1]"
        )
    )

    def chain(client_ip: str, invented: str) -> dict[str, str]:
        return {"X-Forwarded-For": f"{invented}, {client_ip}, ::ffff:10.1.2.3"}

    statuses = [
        (await client.get("/by-ip/x", headers=chain("198.51.100.7", f"203.0.113.{i}"))).status
        for i in range(4)
    ]
    assert statuses == [200, 200, 200, 429]
    resp = await client.get("/by-ip/x", headers=chain("198.51.100.8", "203.0.113.1"))
    assert resp.status == 200  # another client behind the same proxies


async def test_user_keys_are_per_user(client: Client) -> None:
    await make_user(client, "uma")
    await make_user(client, "vic")
    uma = bearer(await login(client, "uma"))
    vic = bearer(await login(client, "vic"))
    assert [(await client.get("/by-user/x", headers=uma)).status for _ in range(3)] == [
        200,
        200,
        429,
    ]
    assert (await client.get("/by-user/x", headers=vic)).status == 200


async def test_route_and_header_keys(client: Client) -> None:
    assert [(await client.get("/by-route/x")).status for _ in range(3)] == [200, 200, 429]
    first = await client.get("/by-header/x", headers={"X-Api-Key": "k1"})
    second = await client.get("/by-header/x", headers={"X-Api-Key": "k1"})
    other = await client.get("/by-header/x", headers={"X-Api-Key": "k2"})
    assert (first.status, second.status, other.status) == (200, 429, 200)


async def test_models_have_their_own_limits(client: Client) -> None:
    await make_user(client, "wes")
    wes = bearer(await login(client, "wes"))
    statuses = [(await client.get("/models/tiny/v1/models", headers=wes)).status for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_two_instances_on_redis_enforce_one_limit(
    gateway: MakeGateway, policies: Path, echo: TestServer, redis_url: str, redis_prefix: str
) -> None:
    assert echo.port is not None
    text = limits_config(echo.port)
    a = await gateway(text, redis_url=redis_url, redis_prefix=redis_prefix)
    b = await gateway(text, redis_url=redis_url, redis_prefix=redis_prefix)
    statuses = [(await (a if i % 2 == 0 else b).get("/by-route/x")).status for i in range(4)]
    assert statuses == [200, 200, 429, 429]
    # concurrent requests on both: still exactly the limit passes
    c = await gateway(
        text.replace("limit: 2, per: 1m, key: route", "limit: 5, per: 1m, key: route"),
        redis_url=redis_url,
        redis_prefix=redis_prefix + "c:",
    )
    d = await gateway(
        text.replace("limit: 2, per: 1m, key: route", "limit: 5, per: 1m, key: route"),
        redis_url=redis_url,
        redis_prefix=redis_prefix + "c:",
    )
    results = await asyncio.gather(*((c if i % 2 else d).get("/by-route/x") for i in range(12)))
    assert sorted(r.status for r in results).count(200) == 5


class OwnRedis:
    """A redis-server of this test's own, so it can be stopped and started again."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ping = subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
            )
            if ping.stdout.strip() == "PONG":
                return
            time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server is not installed")
    server = OwnRedis(binary, tmp_path)
    server.start()
    yield server
    server.stop()


async def test_redis_down_fail_open_then_recovers(
    gateway: MakeGateway, policies: Path, echo: TestServer, own_redis: OwnRedis
) -> None:
    assert echo.port is not None
    client = await gateway(limits_config(echo.port), redis_url=own_redis.url)
    assert (await client.get("/by-route/x")).status == 200
    await asyncio.to_thread(own_redis.stop)
    # Redis is gone: requests keep flowing, limited in process (a fresh local bucket)
    assert [(await client.get("/by-route/x")).status for _ in range(3)] == [200, 200, 429]
    # Redis is back: after the back-off the shared bucket is used again
    await asyncio.to_thread(own_redis.start)
    statuses: list[int] = []
    for _ in range(100):  # bounded: the back-off is one second
        await asyncio.sleep(0.05)
        statuses.append((await client.get("/by-route/x")).status)
        if statuses[-1] == 200:
            break
    assert statuses[-1] == 200  # a fresh shared bucket in the new Redis


async def test_redis_down_fail_closed_refuses_limited_routes(
    gateway: MakeGateway, policies: Path, echo: TestServer
) -> None:
    assert echo.port is not None
    dead = f"redis://127.0.0.1:{free_port()}/0"
    client = await gateway(limits_config(echo.port, "redis_failure: closed"), redis_url=dead)
    resp = await client.get("/by-route/x")
    assert resp.status == 503
    assert (await resp.json())["code"] == "rate_limit_unavailable"
    assert resp.headers["Retry-After"] == "1"
    assert (await client.get("/free/x")).status == 200  # unlimited routes are not affected


async def test_refusals_are_counted_in_metrics(client: Client) -> None:
    for _ in range(4):
        await client.get("/by-ip/x")
    text = await (await client.get("/metrics")).text()
    assert 'gateway_rate_limited_total{route="/by-ip/**"} 1.0' in text
