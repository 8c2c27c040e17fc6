"""Token usage of model calls, read from upstream bodies as they pass (no aiohttp here).

A model's `usage:` key in routes.yaml names a format in READERS; `reader_for`
builds its reader once, at config load. Per request, the proxy calls

    plan = reader.request_hook(body, content_type)   # forward plan.body upstream
    usage = reader.from_json(response_body)           # a JSON response, or:
    tap = reader.stream(strip_usage=plan.injected_usage)
    for chunk in upstream: send(tap.feed(chunk))      # SSE: bytes out at once
    rest, usage = tap.finish(); send(rest)

Usage is UNKNOWN (every count None) when the upstream said nothing: never zero.

Adding a format takes one class and one entry: subclass UsageReader (see
reader.py; openai.py is the example) with a StreamTap subclass whose `judge`
and `observe` read that format's events (sse.py does the SSE framing), then
add `"name": TheReader` to READERS.
"""

from __future__ import annotations

from gateway.usage.openai import OpenAIReader, OpenAIStreamTap
from gateway.usage.reader import MAX_PARSE, UNKNOWN, RequestPlan, Usage, UsageReader
from gateway.usage.sse import MAX_EVENT, StreamTap, Verdict, is_event_stream

READERS: dict[str, type[UsageReader]] = {"openai": OpenAIReader}


def reader_for(name: str) -> UsageReader:
    """The reader of a `usage:` format; ValueError naming the known ones otherwise."""
    try:
        return READERS[name]()
    except KeyError:
        known = ", ".join(sorted(READERS))
        raise ValueError(f"unknown usage format {name!r} (known: {known})") from None


__all__ = [
    "MAX_EVENT",
    "MAX_PARSE",
    "READERS",
    "UNKNOWN",
    "OpenAIReader",
    "OpenAIStreamTap",
    "RequestPlan",
    "StreamTap",
    "Usage",
    "UsageReader",
    "Verdict",
    "is_event_stream",
    "reader_for",
]
