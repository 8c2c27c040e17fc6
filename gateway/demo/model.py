"""DEMO ONLY: a tiny OpenAI-style model upstream, so the gateway has something to front.

It answers `POST /v1/chat/completions` with a canned completion, as one JSON
body or, with `"stream": true`, as server-sent events a few milliseconds
apart; usage is reported the way OpenAI does (in the body, or in a final
chunk when `stream_options.include_usage` is true). It is not a model and
must never be deployed as one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

REPLY = "This is the demo model behind the gateway. It echoes: "


def _completion_words(messages: Any) -> list[str]:
    last = ""
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        last = str(messages[-1].get("content", ""))
    return (REPLY + last).split(" ")


def _usage(prompt: Any, words: list[str]) -> dict[str, int]:
    prompt_tokens = max(1, len(orjson.dumps(prompt)) // 4)
    completion_tokens = len(words)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def chat(request: web.Request) -> web.StreamResponse:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"error": {"message": "body must be an object"}}, status=400)
    model = request.app[NAME]
    messages = body.get("messages", [])
    words = _completion_words(messages)
    usage = _usage(messages, words)
    ident = f"chatcmpl-{uuid.uuid4().hex[:12]}"
    created = int(time.time())
    if not body.get("stream"):
        return web.json_response(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": " ".join(words)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    response.headers["Cache-Control"] = "no-cache"
    await response.prepare(request)
    # The client (the gateway) may go away mid-stream: then there is nothing left to do.
    with contextlib.suppress(ConnectionResetError):
        await _stream(response, body, model, words, usage, ident, created, request)
    return response


async def _stream(
    response: web.StreamResponse,
    body: dict[str, Any],
    model: str,
    words: list[str],
    usage: dict[str, int],
    ident: str,
    created: int,
    request: web.Request,
) -> None:
    delay = float(request.query.get("delay", "0.02"))
    for i, word in enumerate(words):
        chunk: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}],
        }
        if i == len(words) - 1:
            chunk["choices"][0]["finish_reason"] = "stop"
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await asyncio.sleep(delay)
    options = body.get("stream_options") or {}
    if isinstance(options, dict) and options.get("include_usage"):
        final = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage,
        }
        await response.write(b"data: " + orjson.dumps(final) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()


async def models(request: web.Request) -> web.StreamResponse:
    return web.json_response(
        {"object": "list", "data": [{"id": request.app[NAME], "object": "model"}]}
    )


async def health(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok", "demo": True})


NAME = web.AppKey("demo.model_name", str)


def build_demo_app(name: str = "demo") -> web.Application:
    app = web.Application()
    app[NAME] = name
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="DEMO model upstream (not a real model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--name", default="demo")
    args = parser.parse_args()
    web.run_app(build_demo_app(args.name), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
