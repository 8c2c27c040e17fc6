"""JSON in and out for local endpoints: 406, 415, 413, 408 and 400 decided in one place."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from gateway.context import CTX
from gateway.problems import GatewayError
from gateway.server.protocol import close_after_response

_JSON_TYPES = ("application/json", "application/problem+json")


def accepts_json(accept: str | None) -> bool:
    """Whether an Accept header admits JSON (absent or */* does)."""
    if not accept:
        return True
    for item in accept.split(","):
        media, _, params = item.strip().partition(";")
        media = media.strip().lower()
        if media not in ("*/*", "application/*", *_JSON_TYPES) and not media.endswith("+json"):
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            return True
    return False


async def read_json(request: web.Request, max_body: int) -> Any:
    """The request body as JSON, or the problem that explains why not."""
    content_type = request.headers.get("Content-Type", "")
    media = content_type.partition(";")[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise GatewayError.unsupported_media_type(media)
    if request.content_length is not None and request.content_length > max_body:
        raise GatewayError.too_large(max_body)
    body = bytearray()
    # server.body_timeout bounds the whole read: a client that declares a body and
    # sends it slowly (or never) must not hold a handler, its memory and its
    # connection for as long as it likes (nginx's client_body_timeout).
    runtime = request[CTX].runtime
    assert runtime is not None  # set by the route stage
    timeout = runtime.config.server.body_timeout
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_any():
                body += chunk
                if len(body) > max_body:
                    raise GatewayError.too_large(max_body)
    except TimeoutError:
        close_after_response(request)  # the rest of the body would only be read to be dropped
        raise GatewayError.request_timeout(
            "body_timeout",
            f"the request body did not arrive within {timeout:g}s (server.body_timeout)",
        ) from None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError.bad_request(
            f"request body is not valid JSON (at character {exc.pos})", code="malformed_json"
        ) from None


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
