"""Usage readers: request plans, JSON usage, and the SSE tap at every byte boundary."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.demo.model import build_demo_app
from gateway.usage import (
    MAX_EVENT,
    READERS,
    UNKNOWN,
    OpenAIReader,
    RequestPlan,
    StreamTap,
    Usage,
    reader_for,
)

JSON = "application/json"
READER = OpenAIReader()
USAGE = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}

Client = TestClient[web.Request, web.Application]
AiohttpClient = Callable[[web.Application], Awaitable[Client]]


def chunk(content: str | None = None, **extra: Any) -> bytes:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    event = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": choices, **extra}
    return b"data: " + orjson.dumps(event) + b"\n\n"


USAGE_EVENT = chunk(usage=USAGE)
DONE = b"data: [DONE]\n\n"
TRANSCRIPT = chunk("Hello") + chunk(" world") + USAGE_EVENT + DONE


def run(tap: StreamTap, pieces: list[bytes]) -> tuple[bytes, Usage]:
    out = b"".join(tap.feed(piece) for piece in pieces)
    rest, usage = tap.finish()
    return out + rest, usage


def every_split(stream: bytes) -> list[list[bytes]]:
    return [[stream[:i], stream[i:]] for i in range(len(stream) + 1)]


def byte_by_byte(stream: bytes) -> list[bytes]:
    return [stream[i : i + 1] for i in range(len(stream))]


async def demo_output(aiohttp_client: AiohttpClient, body: dict[str, Any]) -> bytes:
    client = await aiohttp_client(build_demo_app("demo"))
    response = await client.post("/v1/chat/completions?delay=0", json=body)
    assert response.status == 200
    return await response.read()


ASK = {"model": "demo", "messages": [{"role": "user", "content": "count my tokens please"}]}


# -- JSON responses ------------------------------------------------------------------


async def test_usage_is_read_from_the_demo_models_json_response(
    aiohttp_client: AiohttpClient,
) -> None:
    body = await demo_output(aiohttp_client, ASK)
    expected = orjson.loads(body)["usage"]
    usage = READER.from_json(body)
    assert usage == Usage(**expected)
    assert usage.known
    assert usage.total_tokens == expected["prompt_tokens"] + expected["completion_tokens"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"choices": []}',
        b'{"usage": null}',
        b'{"usage": {"prompt_tokens": "9", "completion_tokens": true}}',
        b"[1, 2]",
        b"not json",
        b"",
    ],
)
def test_a_response_without_usage_is_unknown_never_zero(body: bytes) -> None:
    usage = READER.from_json(body)
    assert usage is UNKNOWN or usage == UNKNOWN
    assert not usage.known
    assert usage != Usage(0, 0, 0)
    assert usage.total_tokens is None


def test_a_missing_total_is_the_sum_and_a_partial_usage_stays_partial() -> None:
    assert READER.from_json(b'{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}') == Usage(
        3, 4, 7
    )
    assert READER.from_json(b'{"usage": {"total_tokens": 5}}') == Usage(None, None, 5)


# -- request plans -------------------------------------------------------------------


def test_a_streaming_request_gets_include_usage_and_keeps_every_other_field() -> None:
    request = {
        "model": "m",
        "messages": [{"role": "user", "content": "hé"}],
        "stream": True,
        "temperature": 0.7,
        "stream_options": {"other": 1},
        "max_tokens": 50,
    }
    plan = READER.request_hook(orjson.dumps(request), JSON)
    assert plan.understood
    assert plan.stream
    assert plan.injected_usage
    assert not plan.client_wants_usage
    assert plan.max_tokens == 50
    sent = orjson.loads(plan.body)
    assert sent == {**request, "stream_options": {"other": 1, "include_usage": True}}
    assert list(sent) == list(request)  # the field order is kept too


def test_include_usage_is_added_when_stream_options_is_absent_or_false() -> None:
    for extra in ({}, {"stream_options": {"include_usage": False}}):
        plan = READER.request_hook(orjson.dumps({"stream": True, **extra}), JSON)
        assert plan.injected_usage
        assert orjson.loads(plan.body)["stream_options"] == {"include_usage": True}


def test_a_client_that_asked_for_usage_is_left_untouched() -> None:
    body = (
        b'{"stream": true, "stream_options": {"include_usage": true}, "max_completion_tokens": 7}'
    )
    plan = READER.request_hook(body, "application/json; charset=utf-8")
    assert plan.body is body
    assert plan.stream
    assert plan.client_wants_usage
    assert not plan.injected_usage
    assert plan.max_tokens == 7


def test_a_non_streaming_request_is_untouched_and_its_budget_read() -> None:
    body = b'{"model": "m", "max_tokens": 300, "messages": []}'
    plan = READER.request_hook(body, JSON)
    assert plan.body is body
    assert plan == RequestPlan(body=body, understood=True, max_tokens=300)


def test_max_completion_tokens_wins_and_odd_budgets_are_unknown() -> None:
    both = READER.request_hook(b'{"max_tokens": 10, "max_completion_tokens": 20}', JSON)
    assert both.max_tokens == 20
    for odd in (b"true", b"-1", b"1.5", b'"10"', b"null"):
        assert READER.request_hook(b'{"max_tokens": ' + odd + b"}", JSON).max_tokens is None


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"stream": true', JSON),  # invalid JSON
        (b'[{"stream": true}]', JSON),  # JSON, not an object
        (b'{"stream": true, "stream_options": "yes"}', "text/plain"),
        (b'{"stream": true}', ""),
        (b'{"stream": true}', "application/x-www-form-urlencoded"),
    ],
)
def test_bodies_not_understood_are_untouched_with_an_unknown_plan(
    body: bytes, content_type: str
) -> None:
    plan = READER.request_hook(body, content_type)
    assert plan == RequestPlan.untouched(body)
    assert plan.body is body
    assert not plan.understood
    assert not plan.stream
    assert plan.max_tokens is None


def test_a_malformed_stream_options_or_an_oversized_body_is_not_rewritten() -> None:
    odd = b'{"stream": true, "stream_options": "yes"}'
    assert READER.request_hook(odd, JSON).body is odd
    big = orjson.dumps({"stream": True, "pad": "x" * READER.max_parse})
    assert READER.request_hook(big, JSON) == RequestPlan.untouched(big)


# -- the SSE tap: the demo model's real output ---------------------------------------


async def test_the_demo_stream_passes_byte_identical_at_every_split(
    aiohttp_client: AiohttpClient,
) -> None:
    body = {**ASK, "stream": True, "stream_options": {"include_usage": True}}
    stream = await demo_output(aiohttp_client, body)
    expected = orjson.loads(
        next(line for line in stream.split(b"\n") if b'"choices":[]' in line)[len(b"data: ") :]
    )["usage"]
    for pieces in [*every_split(stream), byte_by_byte(stream)]:
        out, usage = run(READER.stream(), pieces)
        assert out == stream
        assert usage == Usage(**expected)


async def test_the_injected_usage_chunk_is_stripped_at_every_split(
    aiohttp_client: AiohttpClient,
) -> None:
    plan = READER.request_hook(orjson.dumps({**ASK, "stream": True}), JSON)
    assert plan.injected_usage
    stream = await demo_output(aiohttp_client, orjson.loads(plan.body))
    events = [event + b"\n\n" for event in stream.split(b"\n\n")[:-1]]
    usage_events = [event for event in events if b'"choices":[]' in event]
    assert len(usage_events) == 1
    assert events[-1] == DONE
    expected_out = b"".join(event for event in events if event not in usage_events)
    assert len(expected_out) == len(stream) - len(usage_events[0])
    expected = Usage(**orjson.loads(usage_events[0][len(b"data: ") :])["usage"])
    for pieces in [*every_split(stream), byte_by_byte(stream)]:
        out, usage = run(READER.stream(strip_usage=plan.injected_usage), pieces)
        assert out == expected_out
        assert usage == expected


async def test_a_stream_without_usage_is_unknown_and_unchanged(
    aiohttp_client: AiohttpClient,
) -> None:
    stream = await demo_output(aiohttp_client, {**ASK, "stream": True})
    for strip in (False, True):
        out, usage = run(READER.stream(strip_usage=strip), [stream])
        assert out == stream
        assert usage is UNKNOWN


# -- the SSE tap: transcripts --------------------------------------------------------


def test_usage_on_the_last_content_chunk_is_read_and_never_stripped() -> None:
    last = chunk("!", usage=USAGE)
    stream = chunk("Hi", usage=None) + last + DONE
    for strip in (False, True):
        for pieces in every_split(stream):
            out, usage = run(READER.stream(strip_usage=strip), pieces)
            assert out == stream
            assert usage == Usage(9, 12, 21)


def test_crlf_line_endings_at_every_split() -> None:
    crlf = TRANSCRIPT.replace(b"\n", b"\r\n")
    stripped = crlf.replace(USAGE_EVENT.replace(b"\n", b"\r\n"), b"")
    assert len(stripped) < len(crlf)
    for pieces in [*every_split(crlf), byte_by_byte(crlf)]:
        assert run(READER.stream(), pieces) == (crlf, Usage(9, 12, 21))
        assert run(READER.stream(strip_usage=True), pieces) == (stripped, Usage(9, 12, 21))


def test_comments_fields_and_multi_line_data_belong_to_the_event() -> None:
    usage_event = (
        b': the usage follows\nid: 7\ndata: {"id": "x", "choices": [],\n'
        b'data:  "usage": {"prompt_tokens": 1, "completion_tokens": 2}}\n\n'
    )
    stream = b": keep-alive\n\n" + chunk("a") + usage_event + DONE
    for pieces in [*every_split(stream), byte_by_byte(stream)]:
        assert run(READER.stream(), pieces) == (stream, Usage(1, 2, 3))
        out, usage = run(READER.stream(strip_usage=True), pieces)
        assert out == stream.replace(usage_event, b"")
        assert usage == Usage(1, 2, 3)


def test_a_huge_event_is_released_as_it_comes_and_unmodified() -> None:
    huge = chunk(usage=USAGE, padding="x" * (2 * MAX_EVENT))  # even a usage-only one
    stream = chunk("a") + huge + DONE
    tap = READER.stream(strip_usage=True)
    pieces = [stream[i : i + 1000] for i in range(0, len(stream), 1000)]
    released = b""
    for i, piece in enumerate(pieces):
        released += tap.feed(piece)
        fed = sum(map(len, pieces[: i + 1]))
        if fed > len(chunk("a")) + MAX_EVENT:
            assert released == stream[:fed]  # past the bound, nothing is held
    rest, usage = tap.finish()
    assert released + rest == stream
    assert usage is UNKNOWN  # an oversized event is not read either: memory stays flat


def test_each_event_is_released_as_soon_as_it_is_complete() -> None:
    # Fed one byte at a time: once an event's blank line is in, all of it is out
    # (content chunks even earlier: as soon as their data line is complete).
    events = [b": ping\n\n", chunk("Hi"), USAGE_EVENT, chunk("!"), DONE]
    stream = b"".join(events)
    tap = READER.stream(strip_usage=True)
    released, fed = b"", b""
    for event in events:
        for i in range(len(event)):
            fed += event[i : i + 1]
            released += tap.feed(event[i : i + 1])
            data_line_done = event.startswith(b"data: ") and i >= event.index(b"\n")
            if event is not USAGE_EVENT and data_line_done:
                assert released == fed.replace(USAGE_EVENT, b"")
        assert released == fed.replace(USAGE_EVENT, b"")
    assert tap.finish() == (b"", Usage(9, 12, 21))
    assert released == stream.replace(USAGE_EVENT, b"")


def test_an_unterminated_last_event_still_counts() -> None:
    stream = chunk("a") + b'data: {"choices": [], "usage": {"total_tokens": 4}}'
    assert run(READER.stream(), [stream]) == (stream, Usage(None, None, 4))
    assert run(READER.stream(strip_usage=True), [stream]) == (chunk("a"), Usage(None, None, 4))


def test_a_leading_bom_and_stray_blank_lines_pass() -> None:
    stream = b"\xef\xbb\xbf" + USAGE_EVENT + b"\n\n" + DONE
    out, usage = run(READER.stream(strip_usage=True), byte_by_byte(stream))
    assert out == b"\n\n" + DONE
    assert usage == Usage(9, 12, 21)


# -- the registry --------------------------------------------------------------------


def test_reader_for_names_a_registered_format() -> None:
    assert isinstance(reader_for("openai"), OpenAIReader)
    assert READERS["openai"] is OpenAIReader
    with pytest.raises(ValueError, match=r"unknown usage format 'anthropic' \(known: openai\)"):
        reader_for("anthropic")
