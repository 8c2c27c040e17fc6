"""The DEMO model speaks OpenAI's format fully, and fails on request: usage in JSON
and SSE (usage-only chunk, on the last chunk, or none), max_tokens, error
statuses, a slow first byte, a reset connection and a stream cut midway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.demo.model import REPLY, build_demo_app
from gateway.runtime import HOLDER
from tests.conftest import MakeGateway, MakeUpstream
from tests.identity import bearer, login, make_user
from tests.modelhelp import reports
from tests.processes import free_port, shipped_config

Client = TestClient[web.Request, web.Application]
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "count my tokens please"}]
WORDS = len((REPLY + "count my tokens please").split(" "))
PROMPT_TOKENS = len(orjson.dumps(MESSAGES)) // 4


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> Client:
    return await aiohttp_client(build_demo_app("demo-x"))


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "whatever-the-client-says", "messages": MESSAGES, **extra}


def assert_consistent(usage: dict[str, int], completion: int) -> None:
    assert usage == {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion,
        "total_tokens": PROMPT_TOKENS + completion,
    }


async def read_events(response: aiohttp.ClientResponse) -> list[tuple[float, str]]:
    """Each `data:` payload with the time it arrived, read one event at a time."""
    events = []
    while True:
        raw = await response.content.readuntil(b"\n\n")
        if not raw:
            return events
        assert raw.startswith(b"data: ")
        assert raw.endswith(b"\n\n")
        events.append((time.monotonic(), raw[6:-2].decode()))
        if raw == b"data: [DONE]\n\n":
            return events


def contents(events: list[tuple[float, str]]) -> list[dict[str, Any]]:
    return [orjson.loads(data) for _, data in events if data != "[DONE]"]


# --- JSON ---


async def test_json_reply_carries_consistent_usage_and_the_name(client: Client) -> None:
    response = await client.post(CHAT, json=chat_body())
    assert response.status == 200
    document = await response.json()
    assert document["model"] == "demo-x"  # --name, not the request's model
    assert document["object"] == "chat.completion"
    choice = document["choices"][0]
    assert choice["message"]["content"].endswith("count my tokens please")
    assert choice["finish_reason"] == "stop"
    assert len(choice["message"]["content"].split(" ")) == WORDS
    assert_consistent(document["usage"], WORDS)


@pytest.mark.parametrize(
    ("query", "headers"),
    [("?usage=0", {}), ("?usage=none", {}), ("", {"X-Demo-Usage": "none"})],
)
async def test_json_without_usage_has_no_usage_key(
    client: Client, query: str, headers: dict[str, str]
) -> None:
    response = await client.post(CHAT + query, json=chat_body(), headers=headers)
    assert response.status == 200
    document = await response.json()
    assert "usage" not in document
    assert document["choices"][0]["message"]["content"].endswith("please")


async def test_json_max_tokens_cuts_with_finish_reason_length(client: Client) -> None:
    response = await client.post(CHAT, json=chat_body(max_tokens=3))
    document = await response.json()
    choice = document["choices"][0]
    assert choice["message"]["content"] == " ".join(REPLY.split(" ")[:3])
    assert choice["finish_reason"] == "length"
    assert_consistent(document["usage"], 3)


async def test_max_tokens_above_the_reply_changes_nothing(client: Client) -> None:
    document = await (await client.post(CHAT, json=chat_body(max_tokens=1000))).json()
    assert document["choices"][0]["finish_reason"] == "stop"
    assert_consistent(document["usage"], WORDS)


# --- SSE ---


async def test_the_first_event_comes_before_the_stream_is_whole(client: Client) -> None:
    # 30 s between events: a buffering server would not show the first one for a minute.
    response = await client.post(CHAT + "?delay=30", json=chat_body(stream=True, max_tokens=3))
    first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), timeout=10)
    assert first.startswith(b"data: ")
    response.close()


async def test_stream_events_then_usage_chunk(client: Client) -> None:
    response = await client.post(
        CHAT + "?delay=0.1",
        json=chat_body(stream=True, max_tokens=5, stream_options={"include_usage": True}),
    )
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = await read_events(response)
    assert events[-1][1] == "[DONE]"
    chunks = contents(events)
    assert len(chunks) == 6  # five words, then the usage-only chunk
    words = [c["choices"][0]["delta"]["content"] for c in chunks[:5]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("usage" not in c for c in chunks[:5])
    assert chunks[4]["choices"][0]["finish_reason"] == "length"
    final = chunks[5]
    assert final["choices"] == []
    assert final["model"] == "demo-x"
    assert_consistent(final["usage"], len(words))
    assert len({c["id"] for c in chunks}) == 1


async def test_stream_without_include_usage_has_no_usage(client: Client) -> None:
    response = await client.post(CHAT + "?delay=0", json=chat_body(stream=True))
    chunks = contents(await read_events(response))
    assert len(chunks) == WORDS
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert text.strip().endswith("count my tokens please")


@pytest.mark.parametrize(("query", "headers"), [("&usage=0", {}), ("", {"X-Demo-Usage": "none"})])
async def test_stream_usage_none_even_when_asked(
    client: Client, query: str, headers: dict[str, str]
) -> None:
    response = await client.post(
        CHAT + "?delay=0" + query,
        json=chat_body(stream=True, stream_options={"include_usage": True}),
        headers=headers,
    )
    events = await read_events(response)
    assert events[-1][1] == "[DONE]"
    chunks = contents(events)
    assert len(chunks) == WORDS
    assert all("usage" not in c and c["choices"] for c in chunks)


@pytest.mark.parametrize("include_usage", [True, False])
async def test_stream_usage_last_rides_on_the_last_content_chunk(
    client: Client, include_usage: bool
) -> None:
    response = await client.post(
        CHAT + "?delay=0&usage=last",
        json=chat_body(stream=True, max_tokens=4, stream_options={"include_usage": include_usage}),
    )
    chunks = contents(await read_events(response))
    assert len(chunks) == 4  # no usage-only chunk
    assert all("usage" not in c for c in chunks[:3])
    assert chunks[3]["choices"][0]["delta"]["content"] == REPLY.split(" ")[3] + " "
    assert chunks[3]["choices"][0]["finish_reason"] == "length"
    assert_consistent(chunks[3]["usage"], 4)


# --- failures ---


@pytest.mark.parametrize("status", [500, 502, 503, 400])
async def test_fail_answers_the_status_with_an_openai_error(client: Client, status: int) -> None:
    response = await client.post(CHAT + f"?fail={status}", json=chat_body(stream=True))
    assert response.status == status
    assert response.content_type == "application/json"
    error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert "Retry-After" not in response.headers


async def test_fail_429_sends_retry_after(client: Client) -> None:
    response = await client.post(CHAT + "?fail=429", json=chat_body())
    assert response.status == 429
    assert response.headers["Retry-After"] == "1"
    assert (await response.json())["error"]["type"] == "rate_limit_exceeded"
    response = await client.post(
        CHAT + "?retry_after=7", json=chat_body(), headers={"X-Demo-Fail": "429"}
    )
    assert response.status == 429
    assert response.headers["Retry-After"] == "7"


async def test_delay_first_holds_back_the_response_head(client: Client) -> None:
    response = await client.post(CHAT + "?delay_first=0.4", json=chat_body())
    assert response.status == 200
    with pytest.raises(asyncio.TimeoutError):
        await client.post(
            CHAT,
            json=chat_body(stream=True),
            headers={"X-Demo-Delay-First": "2"},
            timeout=aiohttp.ClientTimeout(sock_read=0.3),
        )


async def test_delay_first_then_fail(client: Client) -> None:
    response = await client.post(CHAT + "?delay_first=0.2&fail=503", json=chat_body())
    assert response.status == 503


@pytest.mark.parametrize("stream", [True, False])
async def test_fail_reset_closes_without_a_response(client: Client, stream: bool) -> None:
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post(CHAT + "?fail=reset", json=chat_body(stream=stream))
    # the server itself is fine: the next request is answered
    assert (await client.post(CHAT, json=chat_body())).status == 200


async def test_fail_midstream_sends_two_events_then_cuts(client: Client) -> None:
    response = await client.post(
        CHAT + "?fail=midstream&delay=0",
        json=chat_body(stream=True, stream_options={"include_usage": True}),
    )
    assert response.status == 200
    first = await response.content.readuntil(b"\n\n")
    second = await response.content.readuntil(b"\n\n")
    assert first.startswith(b"data: {")
    assert second.startswith(b"data: {")
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.content.readuntil(b"\n\n")


async def test_fail_midstream_cuts_a_json_body(client: Client) -> None:
    response = await client.post(CHAT + "?fail=midstream", json=chat_body())
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?usage=sometimes", "usage must be one of"),
        ("?fail=200", "fail must be a status"),
        ("?fail=boom", "fail must be a status"),
        ("?delay_first=soon", "delay_first must be a number"),
        ("?retry_after=-1", "retry_after must be whole seconds"),
    ],
)
async def test_malformed_switches_are_refused(client: Client, query: str, message: str) -> None:
    response = await client.post(CHAT + query, json=chat_body())
    assert response.status == 400
    assert (await response.json())["error"]["message"].startswith(message)


@pytest.mark.parametrize("limit", [0, -2, "3", True])
async def test_bad_max_tokens_is_refused(client: Client, limit: object) -> None:
    response = await client.post(CHAT, json=chat_body(max_tokens=limit))
    assert response.status == 400
    assert "max_tokens" in (await response.json())["error"]["message"]


async def test_models_and_health(client: Client) -> None:
    listing = await (await client.get("/v1/models")).json()
    assert listing["data"] == [{"id": "demo-x", "object": "model"}]
    assert await (await client.get("/health")).json() == {"status": "ok", "demo": True}


async def test_the_live_websocket_answers_word_by_word_and_echoes_binary(client: Client) -> None:
    async with client.ws_connect("/v1/live") as sock:
        await sock.send_str("hello")
        words = []
        while True:
            message = await sock.receive(timeout=10)
            if message.type == aiohttp.WSMsgType.TEXT and message.data.startswith("{"):
                assert orjson.loads(message.data) == {"done": True, "model": "demo-x"}
                break
            words.append(message.data)
        assert "".join(words).strip() == REPLY + "hello"
        await sock.send_bytes(b"\x00\x01")
        assert (await sock.receive(timeout=10)).data == b"\x00\x01"


async def test_the_shipped_config_counts_the_demo_models_usage(
    gateway: MakeGateway, upstream: MakeUpstream, tmp_path: Path
) -> None:
    """The shipped routes.yaml reads the demo model's usage (`usage: openai`): a call
    through it is charged its tokens in the report, never left as unknown."""
    demo = await upstream(build_demo_app("demo"))
    assert demo.port is not None
    config = shipped_config(tmp_path, free_port(), demo.port)
    client = await gateway(config.read_text())
    assert client.app[HOLDER].current.config.models["demo"].usage == "openai"
    await make_user(client, "dora")
    token = bearer(await login(client, "dora"))
    for stream in (False, True):
        resp = await client.post(
            "/models/demo" + CHAT, json=chat_body(stream=stream), headers=token
        )
        assert resp.status == 200
        await resp.read()
    rows = await reports(client)
    assert [r["total_tokens"] for r in rows] == [PROMPT_TOKENS + WORDS] * 2
    assert [r["prompt_tokens"] for r in rows] == [PROMPT_TOKENS] * 2
