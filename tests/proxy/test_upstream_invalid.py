"""An upstream that answers with invalid HTTP: 502 `upstream_invalid`, its
connection closed, a failure for passive health and for the metrics.

Every answer comes from a raw-socket upstream (tests/rawupstream.py) that
writes exact bytes and keeps its side of the connection open, so a closed
connection is the gateway's doing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.proxy.balancer import Balancer
from gateway.runtime import HOLDER
from tests.conftest import MakeGateway, MakeUpstream
from tests.rawupstream import INVALID_ANSWERS, OK, RawUpstream, Reply

Client = TestClient[web.Request, web.Application]
BOUND = 5.0  # seconds: every answer here is immediate; past this the gateway hung


def config(targets: list[str], extra: str = "") -> str:
    listed = ", ".join(f'"{t}"' for t in targets)
    return (
        f"upstreams:\n  up: {{targets: [{listed}]{extra}}}\n"
        "routes:\n  - {path: /u/**, upstream: up, strip_prefix: /u, auth: none}\n"
    )


def balancer_of(client: Client) -> Balancer:
    return client.app[HOLDER].current.pools["up"].balancer


async def eventually(condition: Callable[[], bool], what: str) -> None:
    for _ in range(300):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def get(
    client: Client, path: str = "/u/x", method: str = "GET"
) -> tuple[int, dict[str, str]]:
    async with asyncio.timeout(BOUND):
        response = await client.request(method, path)
        if response.content_type == "application/problem+json":
            return response.status, await response.json()
        await response.read()
        return response.status, {}


@pytest.mark.parametrize("case", sorted(INVALID_ANSWERS))
async def test_each_invalid_answer_is_502_and_its_connection_closed(
    gateway: MakeGateway, policies: Path, case: str
) -> None:
    async with RawUpstream(Reply(INVALID_ANSWERS[case], close=False)) as raw:
        client = await gateway(config([raw.url]))
        status, problem = await get(client)
        assert status == 502, (case, problem)
        assert problem["code"] == "upstream_invalid"
        assert problem["type"].endswith("/upstream_invalid")
        assert "invalid HTTP" in problem["detail"]
        # never retried, and the connection let go of by the gateway (never reused)
        assert len(raw.requests) == 1
        await eventually(lambda: raw.closed_by_client == 1, f"{case}: connection closed")
        target = balancer_of(client).targets[0]
        assert target.failures == 1  # counted against the target
        assert (target.last_error or "").startswith("invalid HTTP")


async def test_an_unasked_101_closes_the_connection_and_the_next_request_gets_a_new_one(
    gateway: MakeGateway, policies: Path
) -> None:
    def answer(number: int, head: bytes) -> Reply:
        if number == 0:
            return Reply(INVALID_ANSWERS["unasked_101"], close=False)
        return Reply(OK, close=False)

    async with RawUpstream(answer) as raw:
        client = await gateway(config([raw.url]))
        status, problem = await get(client)
        assert (status, problem["code"]) == (502, "upstream_invalid")
        # what was wrong goes to the log (tests/proxy/test_error_details.py), not the client
        assert await get(client) == (200, {})
        assert raw.connections == 2  # the switched connection was not reused


async def test_a_body_after_an_answer_to_head_is_invalid(
    gateway: MakeGateway, policies: Path
) -> None:
    # A HEAD answer has no body whatever its Content-Length says (RFC 9110 §9.3.2).
    sent = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with RawUpstream(Reply(sent + sent, close=False)) as raw:
        client = await gateway(config([raw.url]))
        status, _ = await get(client, method="HEAD")
        assert status == 502
        assert balancer_of(client).targets[0].failures == 1
        assert raw.requests[0].startswith(b"HEAD ")


VALID_UNUSUAL = {
    "no_content_with_zero_length": b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    "no_content": b"HTTP/1.1 204 No Content\r\n\r\n",
    "not_modified_with_length": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    "early_hints_then_ok": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + OK,
    "continue_then_ok": b"HTTP/1.1 100 Continue\r\n\r\n" + OK,
    "status_599": b"HTTP/1.1 599 Odd\r\nContent-Length: 2\r\n\r\nok",
    "no_reason_phrase": b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("case", sorted(VALID_UNUSUAL))
async def test_unusual_but_valid_answers_pass_and_keep_their_connection(
    gateway: MakeGateway, policies: Path, case: str
) -> None:
    sent = VALID_UNUSUAL[case]
    status_line = sent.rsplit(b"HTTP/1.1 ", 1)[1]
    async with RawUpstream(Reply(sent, close=False)) as raw:
        client = await gateway(config([raw.url]))
        for _ in range(2):
            status, _ = await get(client)
            assert status == int(status_line[:3]), case
        assert raw.connections == 1  # kept alive and reused
        assert not (balancer_of(client).targets[0].last_error or "").startswith("invalid")


async def test_invalid_answers_eject_the_target_and_count_in_the_metrics(
    gateway: MakeGateway, upstream: MakeUpstream, policies: Path
) -> None:
    async def fine(request: web.Request) -> web.Response:
        return web.json_response({"from": "good"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", fine)
    good = await upstream(app)
    async with RawUpstream(Reply(INVALID_ANSWERS["duplicate_content_length"])) as raw:
        client = await gateway(
            config([raw.url, f"http://127.0.0.1:{good.port}"], ", passive: {failures: 2}")
        )
        statuses = [(await get(client))[0] for _ in range(6)]
        assert statuses.count(502) == 2  # round-robin: two invalid answers, then ejected
        assert statuses[-2:] == [200, 200]
        bad = balancer_of(client).targets[0]
        assert bad.ejected_until is not None
        assert len(raw.requests) == 2
        metrics = await (await client.get("/metrics")).text()
        counted = [
            line
            for line in metrics.splitlines()
            if line.startswith("gateway_upstream_errors_total{")
            and 'kind="upstream_invalid"' in line
            and 'upstream="up"' in line
        ]
        assert len(counted) == 1
        assert counted[0].endswith(" 2.0"), counted


async def test_an_invalid_answer_from_a_model_falls_back(
    gateway: MakeGateway, upstream: MakeUpstream, policies: Path
) -> None:
    async def backup(request: web.Request) -> web.Response:
        return web.json_response({"model": "backup"})

    app = web.Application()
    app.router.add_post("/{tail:.*}", backup)
    spare = await upstream(app)
    async with RawUpstream(Reply(INVALID_ANSWERS["status_600"])) as raw:
        client = await gateway(
            "models:\n"
            f"  main: {{url: {raw.url}, auth: none, rate_limit: off, fallback: [spare]}}\n"
            f"  spare: {{url: http://127.0.0.1:{spare.port}, auth: none, rate_limit: off}}\n"
        )
        async with asyncio.timeout(BOUND):
            response = await client.post("/models/main/v1/chat", json={"q": 1})
            assert response.status == 200
            assert response.headers["X-Gateway-Model"] == "spare"
            assert await response.json() == {"model": "backup"}
        assert len(raw.requests) == 1
