"""DEMO ONLY: a tiny OpenAI-style model upstream, so the gateway has something to front.

It answers `POST /v1/chat/completions` with a canned completion (a fixed
sentence ending with the last message's content), as one JSON body or, with
`"stream": true`, as server-sent events, one word per event, a few
milliseconds apart, then `data: [DONE]`. `GET /v1/models` lists the one model
named by `--name` (every response carries that name, whatever the request's
`model` says: it is how the gateway's `X-Gateway-Model` is checked), and
`GET /health` answers ok. `GET /v1/live` is a WebSocket that answers each text
message with the same canned reply, a word per frame (README "WebSockets").
It is not a model and must never be deployed as one.

Usage is reported the way OpenAI does: `prompt_tokens` is a quarter of the
messages' JSON size (at least 1), `completion_tokens` the number of words sent,
`total_tokens` their sum. `max_tokens` (or `max_completion_tokens`) stops the
reply after that many words, with `finish_reason: "length"`.

Behaviour is chosen per request, so usage accounting, quotas and fallback can
be tested against it without editing code. Each switch is a query parameter,
or the header beside it (the query parameter wins when both are given):

- `?usage=` / `X-Demo-Usage:`
    - `1` (default): JSON bodies carry `usage`; a stream ends with a
      usage-only chunk (`choices: []`) when `stream_options.include_usage` is
      true, and carries no usage otherwise.
    - `0` or `none`: no usage at all, not even when the stream asked for it
      (a JSON body then has no `usage` key).
    - `last`: a stream carries `usage` on its last content chunk instead of a
      usage-only chunk, whether or not it was asked for (as some
      OpenAI-compatible servers do); JSON bodies as with `1`.
- `?fail=` / `X-Demo-Fail:`
    - a status, 400 to 599 (e.g. `503`): answer that status with an
      OpenAI-style error body (`{"error": {"message", "type", "param",
      "code"}}`) before any byte of a completion; `429` also sends
      `Retry-After` (seconds, `?retry_after=`, default 1).
    - `reset`: close the connection without any response.
    - `midstream`: send a 200 head and two events of the stream (or, for a
      JSON request, the first half of the body), then cut the connection.
- `?delay_first=SECONDS` / `X-Demo-Delay-First:`: sleep before sending the
  response head (a slow first byte); applies to failures too.
- `?delay=SECONDS` / `X-Demo-Delay:`: the pause between streamed events
  (default 0.02).

`--fail` and `--delay-first` (or `build_demo_app(fail=, delay_first=)`) set
an instance's default for the switch of that name, so one instance can fail
every call while another, behind the same gateway route's fallback, answers.

A malformed switch or body is answered 400 with the same error body.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

REPLY = "This is the demo model behind the gateway. It echoes: "
USAGE_MODES = {"1": "report", "0": "none", "none": "none", "last": "last"}
# OpenAI's error `type` for the statuses a fallback test is likely to use.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_exceeded",
}


@dataclass(frozen=True)
class Mode:
    """The per-request switches, parsed once from the query and the X-Demo-* headers."""

    usage: str = "report"  # "report" | "none" | "last"
    fail: int | str | None = None  # a status, "reset" or "midstream"
    delay_first: float = 0.0
    delay: float = 0.02
    retry_after: int = 1


def _switch(request: web.Request, name: str, header: str) -> str | None:
    value = request.query.get(name)
    if value is None:
        value = request.headers.get(header)
    return value if value is not None else request.app[DEFAULTS].get(name)


def _seconds(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {text!r}") from None
    if not 0 <= value <= 600:
        raise ValueError(f"{name} must be between 0 and 600 seconds")
    return value


def parse_mode(request: web.Request) -> Mode:
    """The request's switches; ValueError with a message saying which one is wrong."""
    usage = _switch(request, "usage", "X-Demo-Usage") or "1"
    if usage.lower() not in USAGE_MODES:
        raise ValueError(f"usage must be one of 1, 0, none, last; not {usage!r}")
    asked = _switch(request, "fail", "X-Demo-Fail")
    fail: int | str | None = asked
    if asked is not None and asked not in ("reset", "midstream"):
        if not asked.isdigit() or not 400 <= int(asked) <= 599:
            raise ValueError(f"fail must be a status 400-599, reset or midstream; not {asked!r}")
        fail = int(asked)
    retry_after = request.query.get("retry_after", "1")
    if not retry_after.isdigit():
        raise ValueError(f"retry_after must be whole seconds, not {retry_after!r}")
    return Mode(
        usage=USAGE_MODES[usage.lower()],
        fail=fail,
        delay_first=_seconds(
            _switch(request, "delay_first", "X-Demo-Delay-First") or "0", "delay_first"
        ),
        delay=_seconds(_switch(request, "delay", "X-Demo-Delay") or "0.02", "delay"),
        retry_after=int(retry_after),
    )


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}


def _bad_request(message: str) -> web.Response:
    return web.json_response(error_body(400, message), status=400)


def _completion_words(messages: Any) -> list[str]:
    last = ""
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        last = str(messages[-1].get("content", ""))
    return (REPLY + last).split(" ")


def _max_tokens(body: dict[str, Any]) -> int | None:
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError("max_tokens must be a whole number of at least 1")
    return limit


def _usage(prompt: Any, words: list[str]) -> dict[str, int]:
    prompt_tokens = max(1, len(orjson.dumps(prompt)) // 4)
    completion_tokens = len(words)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _cut(request: web.Request) -> None:
    """Close the connection under the response: the client sees it end early."""
    if request.transport is not None:
        request.transport.close()


@dataclass(frozen=True)
class Reply:
    """One canned completion, ready to be sent as a body or as events."""

    model: str
    ident: str
    created: int
    words: list[str]
    finish: str
    usage: dict[str, int]

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.ident, "object": kind, "created": self.created, "model": self.model}


async def chat(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    try:
        mode = parse_mode(request)
    except ValueError as error:
        return _bad_request(str(error))
    if mode.delay_first:
        await asyncio.sleep(mode.delay_first)
    if mode.fail == "reset":
        _cut(request)
        return web.Response()
    if isinstance(mode.fail, int):
        headers = {"Retry-After": str(mode.retry_after)} if mode.fail == 429 else None
        message = f"the demo model was asked to fail with {mode.fail}"
        return web.json_response(error_body(mode.fail, message), status=mode.fail, headers=headers)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _bad_request("body is not JSON")
    if not isinstance(body, dict):
        return _bad_request("body must be an object")
    try:
        limit = _max_tokens(body)
    except ValueError as error:
        return _bad_request(str(error))
    messages = body.get("messages", [])
    words = _completion_words(messages)
    finish = "stop"
    if limit is not None and len(words) > limit:
        words, finish = words[:limit], "length"
    reply = Reply(
        model=request.app[NAME],
        ident=f"chatcmpl-{uuid.uuid4().hex[:12]}",
        created=int(time.time()),
        words=words,
        finish=finish,
        usage=_usage(messages, words),
    )
    if body.get("stream"):
        return await _stream(request, mode, body, reply)
    return await _json(request, mode, reply)


async def _json(request: web.Request, mode: Mode, reply: Reply) -> web.StreamResponse:
    document = reply.head("chat.completion")
    message = {"role": "assistant", "content": " ".join(reply.words)}
    document["choices"] = [{"index": 0, "message": message, "finish_reason": reply.finish}]
    if mode.usage != "none":
        document["usage"] = reply.usage
    data = orjson.dumps(document)
    if mode.fail != "midstream":
        return web.Response(body=data, content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    _cut(request)
    return response


async def _stream(
    request: web.Request, mode: Mode, body: dict[str, Any], reply: Reply
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    response.headers["Cache-Control"] = "no-cache"
    await response.prepare(request)
    options = body.get("stream_options")
    asked = isinstance(options, dict) and options.get("include_usage") is True
    # The client (the gateway) may go away mid-stream: then there is nothing left to do.
    with contextlib.suppress(ConnectionResetError):
        for i, word in enumerate(reply.words):
            delta = (
                {"role": "assistant", "content": word + " "} if i == 0 else {"content": word + " "}
            )
            last = i == len(reply.words) - 1
            chunk = reply.head("chat.completion.chunk")
            chunk["choices"] = [
                {"index": 0, "delta": delta, "finish_reason": reply.finish if last else None}
            ]
            if last and mode.usage == "last":
                chunk["usage"] = reply.usage
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            if mode.fail == "midstream" and i == 1:
                break
            await asyncio.sleep(mode.delay)
        if mode.fail == "midstream":
            _cut(request)  # after two events (or the only one), before usage and [DONE]
            return response
        if asked and mode.usage == "report":
            final = reply.head("chat.completion.chunk")
            final["choices"] = []
            final["usage"] = reply.usage
            await response.write(b"data: " + orjson.dumps(final) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    return response


async def models(request: web.Request) -> web.StreamResponse:
    return web.json_response(
        {"object": "list", "data": [{"id": request.app[NAME], "object": "model"}]}
    )


async def health(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok", "demo": True})


async def live(request: web.Request) -> web.StreamResponse:
    """GET /v1/live: a WebSocket chat. Each text message is answered with the canned
    reply, one word per text frame, then `{"done": true}`; a binary message is echoed."""
    sock = web.WebSocketResponse(heartbeat=None)
    await sock.prepare(request)
    async for message in sock:
        if message.type == web.WSMsgType.TEXT:
            for word in _completion_words([{"content": message.data}]):
                await sock.send_str(word + " ")
                await asyncio.sleep(0.01)
            await sock.send_json({"done": True, "model": request.app[NAME]})
        elif message.type == web.WSMsgType.BINARY:
            await sock.send_bytes(message.data)
    return sock


NAME = web.AppKey("demo.model_name", str)
# switch → value used when a request gives none (the query and headers win)
DEFAULTS = web.AppKey("demo.defaults", dict[str, str])


def build_demo_app(
    name: str = "demo", *, fail: str | None = None, delay_first: float | None = None
) -> web.Application:
    """The demo model; `fail` and `delay_first` make every call of this instance
    fail or start slowly (two instances, one failing: a fallback to watch)."""
    app = web.Application()
    app[NAME] = name
    defaults: dict[str, str] = {}
    if fail is not None:
        defaults["fail"] = fail
    if delay_first is not None:
        defaults["delay_first"] = str(delay_first)
    app[DEFAULTS] = defaults
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/live", live)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="DEMO model upstream (not a real model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--name", default="demo")
    parser.add_argument("--fail", help="fail every call: a status 400-599, reset or midstream")
    parser.add_argument("--delay-first", type=float, help="seconds before every response head")
    args = parser.parse_args()
    app = build_demo_app(args.name, fail=args.fail, delay_first=args.delay_first)
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
