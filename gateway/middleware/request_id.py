"""Stage 1: give every request an id and a context; every response carries the id."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import hdrs, web
from multidict import CIMultiDict

from gateway import tracing
from gateway.config.schema.server import ServerConfig
from gateway.context import CTX, RequestContext
from gateway.logs import current_request, current_trace
from gateway.middleware import Handler, Middleware
from gateway.middleware.audit import journal_prepared
from gateway.runtime import HOLDER, Runtime
from gateway.state.stores import Stores

_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# hex digit → the RFC 9562 variant digit (10xx) carrying its two low bits
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


_BATCH = 256  # ids per call to os.urandom


class _Randomness:
    """os.urandom's bytes as hex, fetched for _BATCH ids at a time: one system call
    per request cost more than the rest of making its id."""

    __slots__ = ("at", "hex")

    def __init__(self) -> None:
        self.hex = ""
        self.at = 0

    def drop(self) -> None:
        """Forget the bytes fetched so far."""
        self.hex = ""
        self.at = 0

    def take32(self) -> str:
        at = self.at
        if at >= len(self.hex):
            self.hex = os.urandom(16 * _BATCH).hex()
            at = 0
        self.at = at + 32
        return self.hex[at : at + 32]


_RANDOM = _Randomness()
os.register_at_fork(after_in_child=_RANDOM.drop)  # a forked worker draws its own


def new_request_id() -> str:
    """A random (version 4) UUID as text: str(uuid.uuid4()) at a fifth of the cost."""
    h = _RANDOM.take32()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def sane_request_id(sent: str) -> bool:
    """Whether a client's X-Request-Id is kept (README "The request path"): one id then
    follows a call through every hop."""
    return _SANE_ID.fullmatch(sent) is not None


@dataclass(frozen=True, slots=True)
class RequestIdConfig:
    header: str = "X-Request-Id"


def request_id(cfg: RequestIdConfig) -> Middleware:
    header = cfg.header

    @web.middleware
    async def request_id_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        sent = request.headers.get(header)
        rid = sent if sent is not None and sane_request_id(sent) else new_request_id()
        ctx = request[CTX] = RequestContext(rid, time.monotonic(), request.method, request.headers)
        if tracing.TRACING is not None:
            tracing.TRACING.begin(ctx, request.headers)
        logged = current_request.set(rid)  # on every log line meanwhile (gateway/logs.py)
        traced = current_trace.set(ctx.trace_id)
        try:
            return await handler(request)
        finally:
            current_trace.reset(traced)
            current_request.reset(logged)

    return request_id_stage


def stamp_context(headers: CIMultiDict[str], ctx: RequestContext) -> None:
    """The request's id, and its RateLimit-* and CORS headers, on its response."""
    headers["X-Request-Id"] = ctx.request_id
    for name, value in ctx.rate_headers:
        headers[name] = value
    for name, value in ctx.cors_headers:
        if name == "Vary" and "Vary" in headers:
            headers["Vary"] = f"{headers['Vary']}, {value}"
        else:
            headers[name] = value


def stamp_headers(
    stores: Stores,
) -> Callable[[web.BaseRequest, web.StreamResponse], Awaitable[None]]:
    """The app's on_response_prepare hook, for streamed, local and error responses alike;
    each request's audit record goes to `stores.audit`'s journal (none without one)."""

    async def stamp(request: web.BaseRequest, response: web.StreamResponse) -> None:
        ctx = request.get(CTX)
        if ctx is not None:
            stamp_context(response.headers, ctx)
            # The audit journal gets the request's record before a byte of the head leaves.
            if stores.audit is not None:
                journal_prepared(stores, request, ctx, response)
        runtime = ctx.runtime if ctx is not None else None
        if runtime is None and isinstance(request, web.Request):
            holder = request.app.get(HOLDER)  # not routed: the live config's
            runtime = holder.current if holder is not None else None
        if runtime is None:
            stamp_server(response.headers, DEFAULT_SERVER_HEADER)
            return
        stamp_server(response.headers, runtime.config.server.server_header)
        if request.scheme == "https":  # the connection itself is TLS (never X-Forwarded-Proto)
            stamp_hsts(response.headers, runtime)

    return stamp


DEFAULT_SERVER_HEADER = ServerConfig().server_header


def stamp_server(headers: CIMultiDict[str], name: str) -> None:
    """The Server header per server.server_header, replacing aiohttp's (which names Python's
    and aiohttp's versions) and an upstream's; none for ""."""
    if name:
        headers[hdrs.SERVER] = name
    else:
        headers.popall(hdrs.SERVER, None)


def stamp_hsts(headers: CIMultiDict[str], runtime: Runtime) -> None:
    """Strict-Transport-Security per server.tls.hsts, on an answer over TLS (none for 0)."""
    tls = runtime.config.server.tls
    if tls is not None and tls.hsts:
        headers["Strict-Transport-Security"] = f"max-age={tls.hsts}"
