"""The gateway's server connection: problems for malformed HTTP, strict versions, and the guard.

aiohttp's `RequestHandler.handle_error` renders parse failures as text/plain
(and, in debug mode, with a traceback). Every error the gateway makes is
RFC 9457 (README "Errors") with an `X-Request-Id`, so the server's protocol
factory hands out this subclass instead. It also:

- reports each connection's moves to the `ConnectionGuard` (gateway/server/connections.py),
  which enforces server.header_timeout, server.keepalive_timeout and
  server.max_connections and closes connections through `drop`;
- reads the request line before the parser does: a version other than
  HTTP/1.0 and HTTP/1.1 gets 505 (RFC 9110 §15.6.6), a line without one
  (HTTP/0.9, which cannot read a status line) is closed without an answer;
- serves the requests of upstream routes itself, on the lean path
  (gateway/server/lean.py): `GatewayRunner`'s request factory routes each
  parsed head, and `_handle_request` answers a `LeanRequest` without
  aiohttp.web, with the same bookkeeping (in progress for draining, the
  guard's moves, the body failed when the connection is lost);
- closes a connection right after a response when the request asked for that
  (`close_after_response`: a refused `Expect: 100-continue`, a body timeout)
  instead of lingering for a body the client may never send.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.base_protocol import BaseProtocol
from aiohttp.helpers import set_exception
from aiohttp.http import HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import ERROR, RequestHandler, _ErrInfo, _RequestFactory
from aiohttp.web_request import BaseRequest

from gateway.middleware.request_id import DEFAULT_SERVER_HEADER, stamp_server
from gateway.problems import PROBLEM_CONTENT_TYPE, GatewayError, render
from gateway.runtime import HOLDER, RuntimeHolder
from gateway.server.connections import (
    BUSY,
    HEAD,
    LINE_OK,
    LINE_VERSION,
    LINGER,
    ConnectionGuard,
    Tracked,
    raw_problem,
    request_line_verdict,
)
from gateway.server.lean import LeanPath, LeanRequest
from gateway.services import STORES

log = logging.getLogger("gateway.http")

SUPPORTED_VERSIONS = frozenset({HttpVersion10, HttpVersion11})
_PLAIN_ENDINGS = frozenset({b" HTTP/1.1\r", b" HTTP/1.0\r"})  # a request line's last bytes


class _TransportOnly(BaseProtocol):
    """Takes the transport as aiohttp's BaseProtocol does, without `tcp_nodelay`.

    That helper asks the transport for a socket object and its family (an enum
    conversion) to set TCP_NODELAY, which uvloop and asyncio set on every TCP
    connection already: about a third of the CPU an accepted connection cost,
    which counts when a flood of them arrives at once (README "Limits and
    failure behaviour"). In ProblemRequestHandler's bases after RequestHandler,
    it comes between RequestHandler and BaseProtocol in the method order."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport


class ProblemRequestHandler(RequestHandler, _TransportOnly):
    __slots__ = ("_close_after", "_guard", "_lean", "_line", "_lingering", "_tracked")

    def __init__(
        self, manager: web.Server, *, guard: ConnectionGuard | None = None, **kwargs: Any
    ) -> None:
        # No SO_KEEPALIVE: the guard closes idle connections (server.keepalive_timeout)
        # long before the kernel's two-hour probes would, and it costs a system call
        # and a socket object per accepted connection.
        kwargs["tcp_keepalive"] = False
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._tracked: Tracked | None = None
        # the request line read so far; None: this head's line was checked already
        self._line: bytes | None = b""
        self._close_after = False
        self._lingering: StreamReader | None = None  # the unread body of the last request
        self._lean: LeanRequest | None = None  # the lean request being served, if any

    # --- the guard's view of this connection --------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._guard is not None:
            self._tracked = self._guard.admit(self)  # None: refused, already closing

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._tracked is not None and self._guard is not None:
            self._guard.lost(self._tracked)
        # The guard's entry points back at this handler: without the cut, each closed
        # connection is a reference cycle that only a full GC pass frees, and after an
        # idle flood that pass (tens of thousands of connections) stalls the loop.
        self._tracked = None
        transport = self.transport
        lean = self._lean
        if lean is not None:
            # As aiohttp does for its current request: a body still being read ends
            # with the connection, rather than waiting for bytes that cannot come.
            self._lean = None
            set_exception(lean.content, exc or ConnectionResetError("Connection lost"))
        super().connection_lost(exc)
        # The same for asyncio's own selector transport before Python 3.12: it holds a
        # bound method of itself (CPython gh-100348, cleared on close from 3.12 on).
        if transport is not None and getattr(transport, "_read_ready_cb", None) is not None:
            transport._read_ready_cb = None  # type: ignore[attr-defined]

    def drop(self, answer: bytes | None) -> None:
        """Write `answer` when given, then close (the guard's and the version check's way out)."""
        if answer is not None and self.transport is not None:
            self.transport.write(answer)  # flushed before the close completes
        self.force_close()

    def data_received(self, data: bytes) -> None:
        tracked = self._tracked
        if tracked is None or self._guard is None or self._force_close:
            super().data_received(data)  # unguarded (the TLS redirect listener) or closing
            return
        state = tracked.state
        if state != BUSY and state != LINGER:  # bytes of a new request head
            if self._line is not None:
                # The common case without a call: a whole first line in HTTP/1.1 or 1.0
                # (whatever precedes that version, the parser judges).
                end = data.find(b"\n")
                if end >= 10 and data[end - 10 : end] in _PLAIN_ENDINGS and self._line == b"":
                    self._line = None
                elif not self._line_accepted(data):
                    return
            if state != HEAD:
                self._guard.head_started(tracked)
        messages = self._messages
        queued = len(messages)
        super().data_received(data)
        if len(messages) > queued:
            first = messages[queued][0]
            if (
                len(messages) > queued + 1
                or isinstance(first, _ErrInfo)
                or first.version not in SUPPORTED_VERSIONS
            ):
                self._check_versions(queued)  # pipelined, an error, or another version
            self._guard.head_complete(tracked)
        elif state == LINGER and self._lingering is not None and self._lingering.is_eof():
            self._guard.body_done(tracked)

    def log_access(
        self, request: BaseRequest, response: web.StreamResponse, time: float | None
    ) -> None:
        # Called by aiohttp once per response, after its last byte is written:
        # the one place that knows a request is over.
        if self._logging_enabled:
            super().log_access(request, response, time)
        self._answered(request.content)

    def _answered(self, payload: StreamReader) -> None:
        """A response is written whole (`payload`: its request's body, read or not)."""
        if self._close_after:
            self.force_close()  # the written response is flushed first
            return
        tracked = self._tracked
        if tracked is None or self._guard is None or self._messages:
            return  # unguarded, or pipelined requests already queued: still busy
        self._line = b""
        lingering = not payload.is_eof()  # aiohttp reads and drops the rest for a while
        self._lingering = payload if lingering else None
        self._guard.finished(tracked, lingering)

    def close_after(self, close: bool) -> None:
        """Close the connection as soon as the current response is written (`close`), or
        no longer: for a body that may never come (refused `Expect: 100-continue`)."""
        self._close_after = close

    # --- the lean path (gateway/server/lean.py) --------------------------------

    async def _handle_request(  # type: ignore[override]
        self,
        request: BaseRequest | LeanRequest,
        start_time: float | None,
        request_handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
    ) -> tuple[web.StreamResponse | LeanRequest, bool]:
        if not isinstance(request, LeanRequest):
            return await super()._handle_request(request, start_time, request_handler)
        # As aiohttp marks a request in progress, so a shutdown waits for it (draining).
        self._request_in_progress = True
        self._lean = request
        try:
            reset = await request.serve()
        finally:
            self._lean = None
            self._request_in_progress = False
            if self._handler_waiter is not None:
                self._handler_waiter.set_result(None)
        self._answered(request.content)
        # The request loop reads the answer's `keep_alive`: the request has it.
        return request, reset

    # --- HTTP versions -------------------------------------------------------

    def _line_accepted(self, data: bytes) -> bool:
        """Check the request line once it is whole; False: the connection was dropped."""
        pending = self._line
        text = (pending + data) if pending else data
        # RFC 9112 §2.2: empty lines before a request line are ignored.
        text = text.lstrip(b"\r\n")
        end = text.find(b"\n")
        if end < 0:
            # Longer than the parser takes: leave the refusal (400) to it.
            self._line = text if len(text) <= self.max_line_size else None
            return True
        self._line = None
        line = text[:end].rstrip(b"\r")
        verdict = request_line_verdict(line)
        if verdict == LINE_OK:
            return True
        if verdict == LINE_VERSION:
            version = line.rpartition(b" ")[2].decode("latin-1")
            error = GatewayError.version_not_supported(version)
            self.drop(raw_problem(error, self._server_header()))
        else:
            self.drop(None)  # HTTP/0.9 cannot read a status line: close without one
        return False

    def _check_versions(self, queued: int) -> None:
        """505 for parsed requests of another version (pipelined behind a checked one)."""
        messages = self._messages
        for index in range(queued, len(messages)):
            message = messages[index][0]
            if isinstance(message, _ErrInfo) or message.version in SUPPORTED_VERSIONS:
                continue
            version = "HTTP/{}.{}".format(*message.version)
            exc = HttpProcessingError(code=505, message=version)
            messages[index] = (_ErrInfo(status=505, exc=exc, message=version), EMPTY_PAYLOAD)

    # --- errors before routing -----------------------------------------------

    def _server_header(self) -> str:
        """server.server_header of the live config ("": none), for answers made here."""
        holder = getattr(self._manager, "holder", None)
        if holder is None:
            return DEFAULT_SERVER_HEADER
        return str(holder.current.config.server.server_header)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of a response is already sent: the connection is broken.
            raise ConnectionError("response already started; closing the connection")
        if isinstance(exc, ConnectionResetError):
            # The client left mid-request (e.g. while sending its body): nobody to
            # answer, nothing failed here. aiohttp drops the connection quietly.
            raise ConnectionError("client gone")
        request_id = str(uuid.uuid4())
        if status == 505:
            error = GatewayError.version_not_supported(message or "")
        elif status >= 500:
            log.error("error before routing", exc_info=exc, extra={"request_id": request_id})
            error = GatewayError.internal()
        else:
            # The parser's message names what was wrong with the request, not our state.
            detail = (message or "malformed HTTP request").splitlines()[0][:200]
            error = GatewayError(status, "bad_http_request", detail)
        response = _BareResponse(
            self._server_header(),
            status=status,
            body=render(error, request_id),
            content_type=PROBLEM_CONTENT_TYPE,
            headers={"X-Request-Id": request_id},
        )
        response.force_close()
        return response


class _BareResponse(web.Response):
    """A response to a bare request (no app, so no on_response_prepare, stamp_headers):
    its Server header is set after aiohttp's own default, which names its version."""

    def __init__(self, server: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._server = server

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        stamp_server(self._headers, self._server)


def close_after_response(request: BaseRequest, close: bool = True) -> None:
    """Close the connection as soon as this request's response is written (`close`), or
    no longer: for a body that may never come (refused `Expect: 100-continue`, timed out)."""
    protocol = request.protocol
    if isinstance(protocol, ProblemRequestHandler):
        protocol.close_after(close)


class ProblemServer(web.Server):
    guard: ConnectionGuard | None = None
    holder: RuntimeHolder | None = None  # the app's live config, when it has one

    def __call__(self) -> RequestHandler:
        return ProblemRequestHandler(self, loop=self._loop, guard=self.guard, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections answer even unparsable requests with problems,
    report to `guard` (the listener's connection limits) when one is given, and serve
    upstream routes on the lean path (gateway/server/lean.py) unless `lean` is False."""

    def __init__(
        self,
        app: web.Application,
        *,
        guard: ConnectionGuard | None = None,
        lean: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._guard = guard
        self._lean = lean

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = ProblemServer  # same state, one overridden factory method
        assert isinstance(server, ProblemServer)
        server.guard = self._guard
        holder, stores = self._app.get(HOLDER), self._app.get(STORES)
        server.holder = holder
        if self._lean and holder is not None and stores is not None:
            server.request_factory = routed(LeanPath(holder, stores), server.request_factory)
        return server


def routed(lean: LeanPath, app_request: _RequestFactory) -> _RequestFactory:
    """The request factory: a `LeanRequest` for a head of an upstream route, else
    aiohttp.web's request (`app_request`) for the app and its middleware chain."""

    def make(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> BaseRequest:
        if (
            message is not ERROR
            and isinstance(protocol, ProblemRequestHandler)
            and isinstance(writer, StreamWriter)
        ):
            request = lean.request(message, payload, protocol, writer)
            if request is not None:
                return request  # type: ignore[return-value]  # served by _handle_request
        return app_request(message, payload, protocol, writer, task)

    return make


class GatewaySite(web.TCPSite):
    """A TCPSite whose TLS handshakes must finish within `handshake_timeout` seconds.

    aiohttp's TCPSite leaves the event loop's default (60 s), so a client that
    opens a TLS connection and stalls its handshake held it that long, outside
    the connection guard (which meets a TLS connection only once its handshake
    is done). The gateway gives a handshake server.header_timeout, as it gives
    a request head (README "Limits and failure behaviour")."""

    __slots__ = ("_handshake_timeout",)

    def __init__(
        self, runner: web.BaseRunner, *args: Any, handshake_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(runner, *args, **kwargs)
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)  # TCPSite.start, with the handshake timeout passed on
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl_handshake_timeout=self._handshake_timeout if self._ssl_context else None,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
