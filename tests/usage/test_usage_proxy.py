"""Token usage of model calls, read from JSON and SSE responses as they pass."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from gateway.demo.model import build_demo_app
from tests.conftest import MakeGateway, MakeUpstream
from tests.identity import Client, bearer, identity_config, login, make_user
from tests.modelhelp import reports

CHAT = "/models/chat/v1/chat/completions"


@pytest.fixture
async def model(upstream: MakeUpstream) -> TestServer:
    return await upstream(build_demo_app("chat"))


@pytest.fixture
async def client(
    gateway: MakeGateway, policies: Path, model: TestServer, database_url: str
) -> Client:
    text = identity_config() + (
        "models:\n"
        f'  chat: {{url: "http://127.0.0.1:{model.port}", usage: openai, roles: [user]}}\n'
        f'  plain: {{url: "http://127.0.0.1:{model.port}", roles: [user]}}\n'
        "audit: {flush_interval: 1h}\n"
    )
    return await gateway(text, database_url=database_url)


@pytest.fixture
async def token(client: Client) -> dict[str, str]:
    await make_user(client, "xena")
    return bearer(await login(client, "xena"))


def events(raw: bytes) -> list[str]:
    return [e[6:] for e in raw.decode().split("\n\n") if e.startswith("data: ")]


async def test_json_usage_is_recorded(client: Client, token: dict[str, str]) -> None:
    body = {"messages": [{"role": "user", "content": "count me"}]}
    resp = await client.post(CHAT, json=body, headers=token)
    assert resp.status == 200
    usage = (await resp.json())["usage"]
    [row] = await reports(client)
    assert row["model"] == "chat"
    assert row["username"] == "xena"
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        usage["total_tokens"],
    )
    assert row["ttfb_ms"] is not None


async def test_stream_usage_is_asked_for_counted_and_hidden(
    client: Client, token: dict[str, str]
) -> None:
    body = {"stream": True, "messages": [{"role": "user", "content": "stream please"}]}
    resp = await client.post(CHAT + "?delay=0", json=body, headers=token)
    raw = await resp.read()
    data = events(raw)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    # the client did not ask for usage: the usage-only chunk the gateway asked for is gone
    assert all(c["choices"] for c in chunks)
    assert all("usage" not in c for c in chunks)
    [row] = await reports(client)
    assert row["completion_tokens"] == len(chunks)  # the demo counts one token per word
    assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]


async def test_a_client_that_asked_for_usage_gets_it(client: Client, token: dict[str, str]) -> None:
    body = {
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}],
    }
    raw = await (await client.post(CHAT + "?delay=0", json=body, headers=token)).read()
    chunks = [json.loads(d) for d in events(raw)[:-1]]
    assert chunks[-1]["choices"] == []
    [row] = await reports(client)
    assert row["total_tokens"] == chunks[-1]["usage"]["total_tokens"]


async def test_no_usage_is_unknown_never_zero(client: Client, token: dict[str, str]) -> None:
    body = {"messages": [{"role": "user", "content": "x"}]}
    assert (await client.post(CHAT + "?usage=0", json=body, headers=token)).status == 200
    stream = {"stream": True, "messages": [{"role": "user", "content": "x"}]}
    await (await client.post(CHAT + "?usage=0&delay=0", json=stream, headers=token)).read()
    rows = await reports(client)
    assert len(rows) == 2
    assert all(r["total_tokens"] is None and r["prompt_tokens"] is None for r in rows)


async def test_a_model_without_a_usage_format_is_passed_through(
    client: Client, token: dict[str, str]
) -> None:
    body = {"stream": True, "messages": [{"role": "user", "content": "x"}]}
    raw = await (
        await client.post("/models/plain/v1/chat/completions?delay=0", json=body, headers=token)
    ).read()
    assert events(raw)[-1] == "[DONE]"
    [row] = await reports(client)
    assert row["total_tokens"] is None


async def test_events_are_relayed_one_by_one_while_counted(
    client: Client, token: dict[str, str]
) -> None:
    # 30 s between the demo's events: a gateway that buffered the stream to
    # count it would not show the first event for a long time.
    body = {"stream": True, "max_tokens": 3, "messages": [{"role": "user", "content": "x"}]}
    resp = await client.post(CHAT + "?delay=30", json=body, headers=token)
    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=10)
    assert first.startswith(b"data: {")
    resp.close()
