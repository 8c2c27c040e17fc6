"""The lean server path: upstream routes served without aiohttp.web's request machinery.

The gateway's connection (gateway/server/protocol.py) parses each request head
with aiohttp's C parser, as before. Then, before aiohttp builds a web.Request,
`LeanPath.request` routes the head: a request for an upstream or model route
becomes a `LeanRequest`, which the connection serves itself; anything else
(local handlers, the admin API, the dashboard, built-in endpoints, 400/404/405,
CORS preflights, upgrades) goes on to aiohttp.web and its middleware chain.

A `LeanRequest` goes the same way through as the chain (gateway/app.py), with
the same functions: the request id, the route found once, CORS headers, then
`Admission.admit` (authentication, policy, rate limit; gateway/pipeline/),
`Expect: 100-continue`, the proxy (gateway/proxy/forward.py, models.py), one
audit row (gateway/audit/record.py), and problems for every failure. Its
answer is written by `LeanOutgoing`, with the headers aiohttp's
StreamResponse would have added (Date, Connection, Content-Length or
chunked framing, RFC 9112 §6) and server.server_header's Server: a whole
one in one transport write, a streamed one through aiohttp's low-level
StreamWriter.
What it skips per request: web.Request, the URL dispatcher, eight middleware
wrappers, StreamResponse and the response signal.
"""

from __future__ import annotations

import asyncio
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs
from aiohttp.client_exceptions import ClientConnectionResetError
from aiohttp.helpers import must_be_empty_body, rfc822_formatted_time, should_remove_content_length
from aiohttp.http import HttpVersion, HttpVersion11, RawRequestMessage
from aiohttp.http_writer import StreamWriter
from aiohttp.http_writer import _serialize_headers as serialize_head  # C, and checks for CR/LF
from aiohttp.streams import EmptyStreamReader, StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from gateway import tracing
from gateway.audit.record import Arrival, prepared, record, record_error
from gateway.config.schema.server import ServerConfig
from gateway.context import Outcome, RequestContext
from gateway.logs import current_request, current_trace
from gateway.middleware.cors import cors_headers
from gateway.middleware.errors import DENIALS, log_denial, log_unhandled
from gateway.middleware.request_id import (
    new_request_id,
    sane_request_id,
    stamp_context,
    stamp_hsts,
    stamp_server,
)
from gateway.pipeline.admission import Admission
from gateway.pipeline.forwarded import client_ip
from gateway.pipeline.route import find_route, normalise
from gateway.pipeline.verdict import Deny
from gateway.problems import PROBLEM_CONTENT_TYPE, GatewayError
from gateway.proxy.exchange import Incoming
from gateway.proxy.forward import check_length, forward
from gateway.proxy.models import forward_model
from gateway.runtime import RuntimeHolder
from gateway.state.stores import Stores

if TYPE_CHECKING:
    from gateway.server.protocol import ProblemRequestHandler

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def continue_wanted(
    version: HttpVersion, expect: str, request: Incoming, server: ServerConfig
) -> bool:
    """Whether a request let through gets `100 Continue` now; raises its refusal (417,
    413 for a declared body over server.max_body). Both ways through answer Expect so."""
    if version != HttpVersion11:
        return False  # RFC 9110 §10.1.1: an HTTP/1.0 request's expectation is ignored
    if expect.lower() != "100-continue":
        raise GatewayError.expectation_failed(expect)
    check_length(request, server)  # 413 now, before the client sends the body
    return True


_OCTETS = "application/octet-stream"
_REASONS = {status.value: status.phrase for status in HTTPStatus}


class LeanPath:
    """Routes parsed heads and serves those of upstream routes; one per listener."""

    __slots__ = ("admission", "holder", "stores")

    def __init__(self, holder: RuntimeHolder, stores: Stores) -> None:
        self.holder = holder
        self.stores = stores
        self.admission = Admission(stores)

    def request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: ProblemRequestHandler,
        writer: StreamWriter,
    ) -> LeanRequest | None:
        """A `LeanRequest` for a head whose route is an upstream's; None: aiohttp.web's."""
        headers = message.headers
        if message.upgrade:
            return None  # a protocol switch (or a refused one): the chain judges it
        method = message.method
        if method == "OPTIONS" and "Access-Control-Request-Method" in headers:
            return None  # a CORS preflight, answered by the chain's cors stage
        runtime = self.holder.current
        raw_path, _, query = message.path.partition("?")
        path = normalise(raw_path)
        if isinstance(path, Deny):
            return None  # the chain's route stage answers 400
        found = find_route(runtime, method, path)
        if isinstance(found, Deny):
            return None  # 404, 405: the chain's answer
        route = found.route
        if route.upstream is None and route.model is None:
            return None  # a local handler
        sent = headers.get("X-Request-Id")
        rid = sent if sent is not None and sane_request_id(sent) else new_request_id()
        ctx = RequestContext(rid, time.monotonic(), method, headers)
        ctx.runtime = runtime
        ctx.route = route
        ctx.params = found.params
        ctx.path = path
        ctx.query = query
        if tracing.TRACING is not None:
            tracing.TRACING.begin(ctx, headers)
        return LeanRequest(self, message, payload, protocol, writer, ctx)


class LeanRequest:
    """A request of an upstream route: the proxy's `Incoming`, served by `serve`.

    The connection's request loop (aiohttp's RequestHandler.start) treats it as
    it treats a web.Request and its response: it reads `content` for what the
    client did not send yet and `keep_alive` for whether the connection stays."""

    __slots__ = (
        "_arrival",
        "_task",
        "content",
        "ctx",
        "keep_alive",
        "lean",
        "message",
        "method",
        "protocol",
        "remote",
        "scheme",
        "writer",
    )

    def __init__(
        self,
        lean: LeanPath,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: ProblemRequestHandler,
        writer: StreamWriter,
        ctx: RequestContext,
    ) -> None:
        self.lean = lean
        self.message = message
        self.method = message.method
        self.content = payload
        self.protocol = protocol
        self.writer = writer
        self.ctx = ctx
        self.keep_alive = not message.should_close
        self._task: asyncio.Task[Any] | None = None  # cleared by the request loop
        self._arrival: Arrival | None = None
        transport = protocol.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        self.remote: str | None = str(peer[0]) if isinstance(peer, list | tuple) else peer
        tls = transport is not None and transport.get_extra_info("sslcontext") is not None
        self.scheme = "https" if tls else "http"

    # --- the proxy's Incoming -------------------------------------------------

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self.message.headers

    @property
    def body_exists(self) -> bool:
        return type(self.content) is not EmptyStreamReader

    @property
    def content_length(self) -> int | None:
        length = self.message.headers.get(hdrs.CONTENT_LENGTH)
        return int(length) if length is not None else None

    async def read(self) -> bytes:
        return await self.content.read()

    # --- serving ----------------------------------------------------------------

    def arrival(self) -> Arrival:
        """What its audit rows need of it (made once: the head's record and the final row)."""
        arrival = self._arrival
        if arrival is None:
            arrival = Arrival(self.content_length, self.remote or "", self.message.path)
            self._arrival = arrival
        return arrival

    async def serve(self) -> bool:
        """Answer the request; True when the client went away (the connection is done)."""
        ctx = self.ctx
        runtime = ctx.runtime
        assert runtime is not None
        # Counted until it ends: a retired config's pools close once its count is 0.
        occupancy = runtime.occupancy
        occupancy.in_flight += 1
        logged = current_request.set(ctx.request_id)  # on every log line meanwhile
        traced = current_trace.set(ctx.trace_id)
        try:
            return await self._serve()
        finally:
            current_trace.reset(traced)
            current_request.reset(logged)
            occupancy.in_flight -= 1
            if occupancy.retired and not occupancy.in_flight:
                self.lean.holder.drained(runtime)

    async def _serve(self) -> bool:
        ctx, lean = self.ctx, self.lean
        runtime, route = ctx.runtime, ctx.route
        assert runtime is not None
        assert route is not None
        stores = lean.stores
        server = runtime.config.server
        headers = self.message.headers
        ctx.client_ip = client_ip(
            self.remote or "", headers.get("X-Forwarded-For"), server.trusted_proxies
        )
        expect = headers.get(hdrs.EXPECT)
        if expect is not None and self.message.version == HttpVersion11:
            # Until a 100 is sent the client may hold its body back: a request
            # refused meanwhile closes its connection after the answer.
            self.protocol.close_after(True)
        out = LeanOutgoing(self)
        try:
            origin = headers.get("Origin")
            if origin is not None and server.cors is not None:
                ctx.cors_headers = cors_headers(server.cors, origin)
            await lean.admission.admit(ctx)
            if expect is not None:
                self._answer_expect(expect)
            if route.model is not None:
                await forward_model(self, out, ctx, route, runtime, server, stores.quotas)
            elif route.upstream is not None:
                await forward(self, ctx, route, runtime.pools[route.upstream], server, out)
        except GatewayError as exc:
            error = exc
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            # 499: nginx's "client closed request"
            record(stores, self.arrival(), ctx, 499, 0, Outcome.CLIENT_GONE.value, True)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return True
        except Exception:
            log_unhandled(ctx, self.method)
            error = GatewayError.internal()
        else:
            reason = ctx.outcome.value or None
            record(stores, self.arrival(), ctx, out.status, out.sent, reason, True)
            return out.gone
        body = record_error(stores, self.arrival(), ctx, error)
        if error.status in DENIALS:
            log_denial(error, ctx, self.method)
        if out.status:
            # A response head is already on the wire: a problem body would be
            # spliced into it. Cutting the connection is the only honest answer.
            out.cut()
            return True
        try:
            await out.problem(error, body)
        except ConnectionResetError:
            return True
        return False

    def _answer_expect(self, expect: str) -> None:
        """Send `100 Continue` for a request let through, or refuse it (417, 413)."""
        runtime = self.ctx.runtime
        assert runtime is not None
        if not continue_wanted(self.message.version, expect, self, runtime.config.server):
            return
        transport = self.protocol.transport
        if transport is not None:
            transport.write(CONTINUE)
        self.protocol.close_after(False)  # the body is coming: keep-alive again


class LeanOutgoing:
    """The proxy's `Outgoing` for a `LeanRequest`: heads made as aiohttp's StreamResponse
    makes them, then the gateway's own headers, written to the connection's StreamWriter."""

    __slots__ = ("gone", "request", "sent", "status")

    def __init__(self, request: LeanRequest) -> None:
        self.request = request
        self.status = 0  # set once a head is written
        self.sent = 0  # bytes written, head included
        self.gone = False

    def _head(self, status: int, reason: str, headers: CIMultiDict[str], streamed: bool) -> str:
        request = self.request
        method, version = request.method, request.message.version
        writer = request.writer
        empty = must_be_empty_body(method, status)
        keep_alive = request.keep_alive
        if streamed and hdrs.CONTENT_LENGTH not in headers:
            if version >= HttpVersion11:
                if not empty:
                    writer.enable_chunking()
                    headers[hdrs.TRANSFER_ENCODING] = "chunked"
            elif not empty:
                keep_alive = False  # an HTTP/1.0 body without a length ends with the connection
        if empty:
            if hdrs.CONTENT_LENGTH in headers and should_remove_content_length(method, status):
                del headers[hdrs.CONTENT_LENGTH]
            if hdrs.TRANSFER_ENCODING in headers:
                del headers[hdrs.TRANSFER_ENCODING]
        elif headers.get(hdrs.CONTENT_LENGTH) != "0":
            headers.setdefault(hdrs.CONTENT_TYPE, _OCTETS)  # RFC 9110 §8.3
        if hdrs.DATE not in headers:
            headers[hdrs.DATE] = rfc822_formatted_time()
        ctx = request.ctx
        runtime = ctx.runtime
        assert runtime is not None  # a lean request is routed
        stamp_server(headers, runtime.config.server.server_header)  # the upstream's replaced
        if hdrs.CONNECTION not in headers:
            if keep_alive:
                if version[1] == 0:
                    headers[hdrs.CONNECTION] = "keep-alive"
            elif version == HttpVersion11:
                headers[hdrs.CONNECTION] = "close"
        request.keep_alive = keep_alive
        stamp_context(headers, ctx)
        if request.scheme == "https":  # the connection is TLS
            stamp_hsts(headers, runtime)
        self.status = status
        return f"HTTP/{version[0]}.{version[1]} {status} {reason}"

    async def whole(self, status: int, reason: str, headers: CIMultiDict[str], body: bytes) -> None:
        request = self.request
        if hdrs.CONTENT_LENGTH in headers:
            if should_remove_content_length(request.method, status):
                del headers[hdrs.CONTENT_LENGTH]
        elif body or (status != 304 and request.method != hdrs.METH_HEAD):
            headers[hdrs.CONTENT_LENGTH] = str(len(body))
        line = self._head(status, reason, headers, streamed=False)
        prepared(request.lean.stores, request.arrival(), request.ctx, status, len(body))
        transport = request.protocol.transport
        if transport is None or transport.is_closing():
            raise ClientConnectionResetError("Cannot write to closing transport")
        # The head and the body in one write, as StreamWriter.write_eof would send them,
        # without its bookkeeping: nothing is streamed after a whole body.
        data = serialize_head(line, headers)
        if body and not must_be_empty_body(request.method, status):
            data += body
        transport.write(data)
        self.sent = len(data)

    async def start(
        self, status: int, reason: str, headers: CIMultiDict[str], length: int | None
    ) -> None:
        request = self.request
        if length is not None:
            headers[hdrs.CONTENT_LENGTH] = str(length)
        line = self._head(status, reason, headers, streamed=True)
        writer = request.writer
        writer.length = length
        prepared(request.lean.stores, request.arrival(), request.ctx, status, None)
        await writer.write_headers(line, headers)
        writer.send_headers()
        self.sent = writer.output_size

    async def write(self, chunk: bytes) -> None:
        writer = self.request.writer
        await writer.write(chunk)
        self.sent = writer.output_size

    async def finish(self) -> None:
        writer = self.request.writer
        await writer.write_eof()
        self.sent = writer.output_size

    def cut(self) -> None:
        transport = self.request.protocol.transport
        if transport is not None:
            transport.abort()
        self.gone = True

    def client_gone(self) -> bool:
        transport = self.request.protocol.transport
        return transport is None or transport.is_closing()

    async def problem(self, error: GatewayError, body: bytes) -> None:
        """The problem (RFC 9457) `record_error` rendered, as the errors stage sends it."""
        headers: CIMultiDict[str] = CIMultiDict({hdrs.CONTENT_TYPE: PROBLEM_CONTENT_TYPE})
        headers.update(error.headers)
        await self.whole(error.status, _REASONS.get(error.status, ""), headers, body)
