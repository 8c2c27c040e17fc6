"""Stage 1: give every request an id and a context; every response carries the id."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

from aiohttp import web

from gateway.context import CTX, RequestContext
from gateway.middleware import Handler, Middleware

_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True, slots=True)
class RequestIdConfig:
    header: str = "X-Request-Id"


def request_id(cfg: RequestIdConfig) -> Middleware:
    header = cfg.header

    @web.middleware
    async def request_id_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        sent = request.headers.get(header)
        # Keep the client's id when it is sane (contract section 8), so one id
        # follows a call through every hop; otherwise make one.
        rid = sent if sent is not None and _SANE_ID.fullmatch(sent) else str(uuid.uuid4())
        request[CTX] = RequestContext(request_id=rid, started=time.monotonic())
        return await handler(request)

    return request_id_stage


async def stamp_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """on_response_prepare: runs for streamed, local and error responses alike."""
    ctx = request.get(CTX)
    if ctx is not None:
        headers = response.headers
        headers["X-Request-Id"] = ctx.request_id
        for name, value in ctx.rate_headers:
            headers[name] = value
