"""Upstream time and queues are bounded: `timeout` includes the wait for a free
connection, `max_pending` requests may wait (more get 503 `upstream_busy`),
and a request that reached the upstream and lost its connection is a 502
`upstream_reset`, resent only where the route says `retry_after_send`.

Upstreams are raw sockets (tests/rawupstream.py) that hold, answer or drop
each request as told; every wait in a test is bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.proxy.pool import UpstreamPool
from gateway.runtime import HOLDER
from tests.conftest import MakeGateway
from tests.rawupstream import OK, RawUpstream, Reply

Client = TestClient[web.Request, web.Application]
BOUND = 5.0  # seconds: no answer here takes long; past this the gateway hung
KEEP = Reply(OK, close=False)  # answer, keep the connection open
DROP = Reply(b"", close=True)  # read the request, close without a word


def config(targets: list[str], upstream: str = "", route: str = "") -> str:
    listed = ", ".join(f'"{t}"' for t in targets)
    return (
        f"upstreams:\n  up: {{targets: [{listed}]{upstream}}}\n"
        f"routes:\n  - {{path: /u/**, upstream: up, strip_prefix: /u, auth: none{route}}}\n"
    )


def pool_of(client: Client) -> UpstreamPool:
    return client.app[HOLDER].current.pools["up"]


async def eventually(condition: Callable[[], bool], what: str) -> None:
    for _ in range(300):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def call(client: Client, method: str = "GET", data: bytes | None = None) -> tuple[int, str]:
    """Status and problem code ("" for an upstream's answer) of one bounded request."""
    async with asyncio.timeout(BOUND):
        response = await client.request(method, "/u/x", data=data)
        if response.content_type == "application/problem+json":
            return response.status, (await response.json())["code"]
        await response.read()
        return response.status, ""


def scripted(*replies: Reply) -> Callable[[int, bytes], Reply]:
    """Request N gets replies[N]; later ones get the last."""
    return lambda number, head: replies[min(number, len(replies) - 1)]


def upstream_errors(metrics: str, kind: str) -> str:
    rows = [
        line
        for line in metrics.splitlines()
        if line.startswith("gateway_upstream_errors_total{") and f'kind="{kind}"' in line
    ]
    assert len(rows) == 1, rows
    return rows[0].rsplit(" ", 1)[1]


# --- timeout covers the wait for a connection --------------------------------------


async def test_the_wait_for_a_free_connection_counts_against_timeout(
    gateway: MakeGateway, policies: Path
) -> None:
    async with RawUpstream(KEEP) as raw:
        client = await gateway(config([raw.url], ", max_connections: 1, timeout: 300ms"))
        connections = pool_of(client).client._targets[0]
        # The only connection is taken and kept (as a slow exchange would); a request
        # that waits for it must end at its own `timeout`, not when it frees.
        held, _ = await connections.acquire(None)
        try:
            async with asyncio.timeout(3 * 0.3):
                status, code = await call(client)
            assert (status, code) == (504, "upstream_timeout")
            assert connections.line.waiting == 0
            # the pool's own wait, not the target's fault
            assert pool_of(client).balancer.targets[0].failures == 0
        finally:
            connections.release(held, False)
        assert await call(client) == (200, "")
        assert len(raw.requests) == 1  # the timed-out request never went out


# --- max_pending --------------------------------------------------------------------


async def test_beyond_max_pending_waiters_the_answer_is_503_upstream_busy_at_once(
    gateway: MakeGateway, policies: Path
) -> None:
    release = asyncio.Event()
    held = Reply(OK, close=False, wait=release)
    async with RawUpstream(scripted(held, KEEP)) as raw:
        client = await gateway(
            config([raw.url], ", max_connections: 1, max_pending: 1, timeout: 10s")
        )
        line = pool_of(client).client._targets[0].line
        first = asyncio.ensure_future(call(client))
        await eventually(lambda: len(raw.requests) == 1, "the first request holds the connection")
        second = asyncio.ensure_future(call(client))
        await eventually(lambda: line.waiting == 1, "the second request waits in line")
        async with asyncio.timeout(2):  # at once: it never waits for a connection
            response = await client.get("/u/x")
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            problem = await response.json()
        assert problem["code"] == "upstream_busy"
        release.set()
        assert await first == (200, "")
        assert await second == (200, "")
        assert len(raw.requests) == 2  # the refused one never reached the upstream
        assert pool_of(client).balancer.targets[0].failures == 0
        metrics = await (await client.get("/metrics")).text()
        assert upstream_errors(metrics, "upstream_busy") == "1.0"


async def test_max_pending_zero_refuses_any_wait(gateway: MakeGateway, policies: Path) -> None:
    release = asyncio.Event()
    async with RawUpstream(scripted(Reply(OK, close=False, wait=release), KEEP)) as raw:
        client = await gateway(config([raw.url], ", max_connections: 1, max_pending: 0"))
        first = asyncio.ensure_future(call(client))
        await eventually(lambda: len(raw.requests) == 1, "the first request holds the connection")
        assert await call(client) == (503, "upstream_busy")
        release.set()
        assert await first == (200, "")
        assert await call(client) == (200, "")  # a free connection: no wait, no refusal


# --- a connection lost after sending ------------------------------------------------


async def test_a_request_that_reached_the_upstream_and_lost_it_is_502_not_retried(
    gateway: MakeGateway, policies: Path
) -> None:
    async with RawUpstream(DROP) as dropping, RawUpstream(KEEP) as fine:
        client = await gateway(config([dropping.url, fine.url], ", retries: 2"))
        assert await call(client) == (502, "upstream_reset")  # round-robin: `dropping` first
        assert len(dropping.requests) == 1  # not sent twice on the same target
        assert fine.requests == []  # nor on the other one
        assert pool_of(client).balancer.targets[0].failures == 1


async def test_retry_after_send_resends_an_idempotent_request_on_another_target(
    gateway: MakeGateway, policies: Path
) -> None:
    async with RawUpstream(DROP) as dropping, RawUpstream(KEEP) as fine:
        client = await gateway(config([dropping.url, fine.url], route=", retry_after_send: true"))
        assert await call(client) == (200, "")
        assert (len(dropping.requests), len(fine.requests)) == (1, 1)


async def test_retry_after_send_with_one_target_resends_there_but_never_a_post(
    gateway: MakeGateway, policies: Path
) -> None:
    async with RawUpstream(scripted(DROP, KEEP, DROP)) as raw:
        client = await gateway(config([raw.url], route=", retry_after_send: true"))
        assert await call(client) == (200, "")  # dropped, then answered
        assert len(raw.requests) == 2
        assert await call(client, "POST", b"{}") == (502, "upstream_reset")
        assert len(raw.requests) == 3


async def test_retry_after_send_stops_at_retries(gateway: MakeGateway, policies: Path) -> None:
    async with RawUpstream(DROP) as raw:
        client = await gateway(
            config([raw.url], ", retries: 1, retry_budget: 100%", ", retry_after_send: true")
        )
        assert await call(client) == (502, "upstream_reset")
        assert len(raw.requests) == 2  # the request and one retry


async def test_a_stale_keep_alive_connection_is_sent_on_once_more_fresh(
    gateway: MakeGateway, policies: Path
) -> None:
    # The target drops the kept-alive connection as the next request arrives on
    # it, before a byte of answer (its idle timeout racing the request): the
    # request is sent again on a new connection, without retry_after_send.
    async with RawUpstream(scripted(KEEP, DROP, KEEP)) as raw:
        client = await gateway(config([raw.url]))
        assert await call(client) == (200, "")
        assert await call(client) == (200, "")
        assert len(raw.requests) == 3
        assert raw.connections == 2


async def test_a_stale_keep_alive_connection_never_resends_a_post(
    gateway: MakeGateway, policies: Path
) -> None:
    async with RawUpstream(scripted(KEEP, DROP, KEEP)) as raw:
        client = await gateway(config([raw.url]))
        assert await call(client) == (200, "")
        assert await call(client, "POST", b"{}") == (502, "upstream_reset")
        assert len(raw.requests) == 2


async def test_a_busy_model_falls_back(gateway: MakeGateway, policies: Path) -> None:
    release = asyncio.Event()
    async with (
        RawUpstream(Reply(OK, close=False, wait=release)) as main,
        RawUpstream(KEEP) as spare,
    ):
        client = await gateway(
            "models:\n"
            f"  main: {{url: {main.url}, auth: none, rate_limit: off, fallback: [spare],"
            " max_connections: 1, max_pending: 0}\n"
            f"  spare: {{url: {spare.url}, auth: none, rate_limit: off}}\n"
        )
        first = asyncio.ensure_future(client.post("/models/main/v1/chat", json={"q": 1}))
        await eventually(lambda: len(main.requests) == 1, "the first call holds main")
        async with asyncio.timeout(BOUND):
            response = await client.post("/models/main/v1/chat", json={"q": 2})
            assert response.status == 200
            assert response.headers["X-Gateway-Model"] == "spare"
        release.set()
        async with asyncio.timeout(BOUND):
            assert (await first).headers["X-Gateway-Model"] == "main"
        assert (len(main.requests), len(spare.requests)) == (1, 1)
