"""A lean HTTP/1.1 client for the proxy path: keep-alive connections per target.

`aiohttp.ClientSession.request` does a great deal per call that a proxy does
not need (URL building, cookies, tracing, auto headers, redirect handling,
several timers and wrapper objects); on a small proxied exchange it costs
more than the whole middleware chain. Here a request is one serialised head
(aiohttp's C header serialiser) and a body written on aiohttp's own
`StreamWriter`, and the response is read by aiohttp's own protocol and C
parser (`ResponseHandler`): the same parsing, flow control and payload
errors as aiohttp's client, without the layers around them.

Each target keeps a LIFO list of idle connections, at most `max_connections`
open at once, idle ones closed after KEEPALIVE seconds. A connection goes
back to the list only when its response was read to the end, its body was
sent whole, neither side asked to close and nothing arrived after the
response. Requests that find every connection of their target busy wait in
line; at most `max_pending` of them per upstream (all targets together), as
HAProxy's queue and Envoy's max_pending_requests: beyond it a request is
refused at once. `timeout` runs from the moment the request asks for a
connection, so the wait in line, the connect and the whole exchange share it.

The response head is held to RFC 9112 where aiohttp's lenient C parser lets
it pass (a status outside 100-599, a 204 that states a body length, bytes
after a response that has no body, a 101 nobody asked for); what the parser
itself refuses (garbage, duplicate Content-Length, Content-Length with
Transfer-Encoding, NUL / CR / LF in a field, a line over 8190 bytes, more
than 128 fields) becomes the same `InvalidResponse`. A connection that
carried an invalid answer is closed, never reused.

A connection lost after the request went out is the caller's to retry or
not (forward.py: `retry_after_send`), with one exception, the stale
keep-alive race: a target may close a connection it holds idle just as a
request is written on it, and the request then meets a closed socket. So an
idempotent request with nothing to stream, written on a connection taken
from the idle list, whose connection closed or reset before a single byte
of response, is sent once more on a new connection (RFC 9112 §9.3.1; Go's
net/http does the same, and aiohttp's own client). A fresh connection, or
one that started answering, is never sent on twice here.

Failures are aiohttp's exception types, so the proxy maps them as before:
`TargetUnreachable` (a ClientConnectorError-like: nothing was sent),
`aiohttp.ConnectionTimeoutError` (no connection within connect_timeout),
`UpstreamBusy` / `PoolTimeout` (no connection free, nothing was sent),
`aiohttp.ServerTimeoutError` (the whole exchange passed `timeout`),
`InvalidResponse` (the head broke HTTP/1.1),
`aiohttp.ServerDisconnectedError` / `ClientPayloadError` from the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterable
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config.schema.upstreams import UpstreamTarget

KEEPALIVE = 30.0  # seconds an idle upstream connection is kept
INLINE_BODY = 64 * 1024  # bodies up to this are written with the head; larger ones by a task
READ_BUFSIZE = 2**16


class TargetUnreachable(aiohttp.ClientConnectionError):
    """Refused, unreachable, a DNS or TLS handshake failure: nothing was sent."""

    def __init__(self, target: str, os_error: OSError) -> None:
        super().__init__(f"cannot connect to {target}: {os_error.strerror or os_error}")
        self.os_error = os_error


class UpstreamBusy(aiohttp.ClientConnectionError):
    """`max_pending` requests already wait for a connection: refused, nothing was sent."""


class PoolTimeout(aiohttp.ServerTimeoutError):
    """`timeout` passed while the request waited for a free connection: nothing was sent."""


class InvalidResponse(aiohttp.ClientError):
    """The upstream's answer is not valid HTTP/1.1; its connection is closed."""


class _Line:
    """The requests of one upstream waiting for a connection, all targets together."""

    __slots__ = ("limit", "waiting")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.waiting = 0


class _Connections:
    """The keep-alive connections of one target."""

    __slots__ = (
        "address",
        "busy",
        "closed",
        "connect_timeout",
        "host",
        "idle",
        "limit",
        "line",
        "port",
        "server_hostname",
        "ssl",
        "waiters",
    )

    def __init__(
        self,
        target: UpstreamTarget,
        limit: int,
        connect_timeout: float | None,
        ssl_context: ssl.SSLContext | bool,
        line: _Line,
    ) -> None:
        self.line = line
        self.host = target.host
        self.port = target.port
        self.address = target.origin
        self.limit = limit
        self.connect_timeout = connect_timeout
        tls = target.scheme == "https"
        self.ssl: ssl.SSLContext | None = None
        if tls:
            self.ssl = (
                ssl_context
                if isinstance(ssl_context, ssl.SSLContext)
                else ssl.create_default_context()
            )
        self.server_hostname = target.host if tls else None
        self.idle: list[tuple[ResponseHandler, float]] = []  # most recently used last
        self.busy = 0  # connections handed out (or being opened)
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.closed = False

    async def acquire(
        self, deadline: float | None, queued: bool = False, fresh: bool = False
    ) -> tuple[ResponseHandler, bool]:
        """A connection to this target and whether it was idle (else just opened),
        waiting in line for one until `deadline` (loop time; None: no bound).
        `queued`: the request already waited once; `fresh`: never an idle one."""
        idle = self.idle
        if idle and not fresh:
            now = time.monotonic()
            while idle:
                protocol, since = idle.pop()
                # should_close: bytes arrived while idle (an unasked-for answer)
                if (
                    protocol.is_connected()
                    and not protocol.should_close
                    and now - since < KEEPALIVE
                ):
                    self.busy += 1
                    return protocol, True
                protocol.close()  # closed by the target meanwhile, or idle too long
        while self.limit and self.busy >= self.limit:
            line = self.line
            if not queued and line.waiting >= line.limit:
                raise UpstreamBusy(f"{line.limit} requests already wait for a connection")
            queued = True
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            line.waiting += 1
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except (asyncio.CancelledError, TimeoutError) as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # the slot it was given passes to the next waiter
                else:
                    with contextlib.suppress(ValueError):
                        self.waiters.remove(waiter)
                if isinstance(exc, TimeoutError):
                    raise PoolTimeout(f"no free connection to {self.address} in time") from None
                raise
            finally:
                line.waiting -= 1
            if self.idle and not fresh:
                return await self.acquire(deadline, queued)
        self.busy += 1
        try:
            return await self._connect(deadline), False
        except BaseException:
            self.busy -= 1
            self._wake()
            raise

    async def _connect(self, deadline: float | None) -> ResponseHandler:
        loop = asyncio.get_running_loop()
        timeout = self.connect_timeout
        if deadline is not None:
            # the whole exchange's time, the wait in line included, bounds the connect too
            left = deadline - loop.time()
            timeout = left if timeout is None else min(timeout, left)
        try:
            async with asyncio.timeout(timeout):
                _, protocol = await loop.create_connection(
                    lambda: ResponseHandler(loop),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.server_hostname,
                )
        except TimeoutError:
            raise aiohttp.ConnectionTimeoutError(f"connection timeout to {self.address}") from None
        except OSError as exc:
            raise TargetUnreachable(self.address, exc) from None
        return protocol

    def release(self, protocol: ResponseHandler, reusable: bool) -> None:
        self.busy -= 1
        if reusable and not self.closed and protocol.is_connected():
            self.idle.append((protocol, time.monotonic()))
        else:
            protocol.close()
        self._wake()

    def _wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        self.closed = True
        for protocol, _ in self.idle:
            protocol.close()
        self.idle.clear()


class LeanResponse:
    """The upstream's response head and its body as a StreamReader (`content`)."""

    __slots__ = (
        "_connections",
        "_deadline",
        "_protocol",
        "_released",
        "_writer",
        "content",
        "headers",
        "reason",
        "status",
    )

    def __init__(
        self,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        content: StreamReader,
        protocol: ResponseHandler,
        connections: _Connections,
        deadline: asyncio.TimerHandle | None,
        writer: asyncio.Task[None] | None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content = content
        self._protocol = protocol
        self._connections = connections
        self._deadline = deadline
        self._writer = writer
        self._released = False

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    def release(self) -> None:
        """Done with it: the connection is kept when the exchange ended cleanly."""
        if self._released:
            return
        self._released = True
        writer = self._writer
        body_sent = writer is None or (writer.done() and not writer.cancelled())
        if writer is not None and not writer.done():
            writer.cancel()  # answered before the request body was sent: not reusable
        if self._deadline is not None:
            self._deadline.cancel()
        protocol = self._protocol
        reusable = body_sent and self.content.is_eof() and not protocol.should_close
        self._connections.release(protocol, reusable)

    def close(self) -> None:
        """Give up on the response: the connection is closed, never reused."""
        if self._released:
            return
        self._protocol.force_close()
        self.release()


class LeanClient:
    """Keep-alive connections to each target of one upstream."""

    def __init__(
        self,
        targets: tuple[UpstreamTarget, ...],
        *,
        limit: int,
        timeout: float | None,
        connect_timeout: float | None,
        ssl_context: ssl.SSLContext | bool,
        max_pending: int = 100,
    ) -> None:
        line = _Line(max_pending)
        self._targets = [
            _Connections(t, limit, connect_timeout, ssl_context, line) for t in targets
        ]
        self._timeout = timeout or None
        # per target: the Host header aiohttp would send (default ports left out)
        self._hosts = [_host_header(t) for t in targets]

    async def request(
        self,
        index: int,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: object,
    ) -> LeanResponse:
        """Send `method target` to target `index`; return once the response head is in.

        `target` is the request-target as sent (path and query, already encoded);
        `body` is None, bytes, or an async iterable of bytes (streamed: with the
        client's Content-Length when `headers` has one, else chunked).

        A connection lost after sending is raised, but for the stale keep-alive
        race (see the module docstring)."""
        connections = self._targets[index]
        timeout = self._timeout
        # `timeout` starts now: the wait for a connection is part of the exchange
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        protocol, idle = await connections.acquire(deadline)
        try:
            return await self._send(
                connections, protocol, index, method, target, headers, body, deadline
            )
        except _LOST as exc:
            if not (
                idle
                and method in _IDEMPOTENT
                and (body is None or isinstance(body, bytes))
                and _nothing_back(exc)
            ):
                raise
        # a new connection, never another idle one (as stale); already in line once
        protocol, _ = await connections.acquire(deadline, queued=True, fresh=True)
        return await self._send(
            connections, protocol, index, method, target, headers, body, deadline
        )

    async def _send(
        self,
        connections: _Connections,
        protocol: ResponseHandler,
        index: int,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: object,
        at: float | None,
    ) -> LeanResponse:
        loop = asyncio.get_running_loop()
        deadline: asyncio.TimerHandle | None = None
        try:
            if at is not None:
                deadline = loop.call_at(at, _expire, protocol)
            # Host is this target's unless the caller set it (pass_host); it is
            # taken out again after the head is serialised, so a retry on
            # another target with the same headers gets that target's.
            own_host = "Host" not in headers
            if own_host:
                headers["Host"] = self._hosts[index]
            protocol.set_response_params(
                skip_payload=method == "HEAD",
                read_until_eof=True,
                auto_decompress=False,
                read_bufsize=READ_BUFSIZE,
            )
            writer = StreamWriter(protocol, loop)
            task: asyncio.Task[None] | None = None
            if body is None or isinstance(body, bytes | bytearray):
                data = bytes(body or b"")
                if method in _BODY_METHODS or data:
                    headers["Content-Length"] = str(len(data))
                await writer.write_headers(f"{method} {target} HTTP/1.1", headers)
                if own_host:
                    del headers["Host"]
                if len(data) <= INLINE_BODY:
                    await writer.write_eof(data)
                else:
                    task = loop.create_task(_send_body(writer, protocol, data))
            else:
                if "Content-Length" not in headers:
                    headers["Transfer-Encoding"] = "chunked"
                    writer.enable_chunking()
                await writer.write_headers(f"{method} {target} HTTP/1.1", headers)
                if own_host:
                    del headers["Host"]
                task = loop.create_task(_send_body(writer, protocol, body))
            try:
                message, payload = await protocol.read()
                code = message.code
                while 100 <= code < 200 and code != 101:
                    message, payload = await protocol.read()  # 1xx: the real head follows
                    code = message.code
                if code < 200 or code > 599 or code == 204 or code == 304 or method == "HEAD":
                    _check_head(code, message.headers, protocol, headers)
            except HttpProcessingError as exc:
                if task is not None:
                    task.cancel()
                # the parser's own words, without the upstream's bytes it quotes
                what = (exc.message or "unparsable response").split("\n", 1)[0]
                raise InvalidResponse(what.split(":", 1)[0].strip()) from None
            except BaseException:
                if task is not None:
                    task.cancel()
                raise
        except BaseException:
            if deadline is not None:
                deadline.cancel()
            protocol.force_close()
            connections.release(protocol, False)
            raise
        return LeanResponse(
            message.code,
            message.reason,
            message.headers,
            payload,
            protocol,
            connections,
            deadline,
            task,
        )

    def close(self) -> None:
        for connections in self._targets:
            connections.close()


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # sent with Content-Length: 0 when empty
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})  # RFC 9110 §9.2.2
# How a connection closed under a request shows: a FIN, a reset, or a write refused.
_LOST = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientConnectionResetError)


def _nothing_back(exc: BaseException) -> bool:
    """Whether the connection broke before any of a response head had come."""
    # A disconnect mid-head carries the part of the head the parser had.
    return not isinstance(exc, aiohttp.ServerDisconnectedError) or isinstance(exc.message, str)


def _check_head(
    code: int, fields: CIMultiDictProxy[str], protocol: ResponseHandler, sent: CIMultiDict[str]
) -> None:
    """Refuse what llhttp's lenient mode lets through, for an unusual head only:
    a status outside 200-599 (1xx other than 101 were skipped), a response
    without a body (204, 304, an answer to HEAD)."""
    if code == 101:
        # RFC 9110 §15.2.2: a server switches protocols only when asked (Upgrade)
        if "Upgrade" not in sent:
            raise InvalidResponse("101 Switching Protocols to a request that asked for no upgrade")
        return
    if code < 100 or code > 599:
        raise InvalidResponse(f"status {code} is outside 100-599")  # RFC 9110 §15
    if code == 204 and (
        "Transfer-Encoding" in fields or fields.get("Content-Length", "0").strip() != "0"
    ):
        # RFC 9110 §8.6, RFC 9112 §6.1: a 204 never states a body length. A zero
        # Content-Length is let through (widely sent, and harmless).
        raise InvalidResponse("204 No Content that states a body length")
    if len(protocol):
        # A whole further response already parsed behind one that has no body:
        # body bytes the upstream sent anyway (garbage fails in the parser).
        raise InvalidResponse(f"bytes after a {code} response that has no body")


def _host_header(target: UpstreamTarget) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


def _expire(protocol: ResponseHandler) -> None:
    """The upstream's `timeout` passed: fail whatever is waiting, head or body."""
    exc = aiohttp.ServerTimeoutError("timeout of the whole upstream exchange")
    payload: Any = getattr(protocol, "_payload", None)
    if payload is not None:
        payload.set_exception(exc)
    protocol.set_exception(exc)
    protocol.abort()


async def _send_body(
    writer: StreamWriter, protocol: ResponseHandler, body: bytes | AsyncIterable[bytes] | Any
) -> None:
    """Write the request body; a failure is handed to whoever reads the response."""
    try:
        if isinstance(body, bytes):
            await writer.write_eof(body)
            return
        # A StreamReader iterates by lines; iter_any gives what arrived, as it arrived.
        chunks = body.iter_any() if isinstance(body, StreamReader) else body
        async for chunk in chunks:
            await writer.write(chunk)
        await writer.write_eof()
    except asyncio.CancelledError:
        raise
    except aiohttp.ClientError as exc:
        protocol.set_exception(exc)
    except OSError as exc:
        protocol.set_exception(aiohttp.ClientOSError(*exc.args))
    except Exception as exc:  # e.g. BodyTooLarge from a chunked body that grew too big
        protocol.set_exception(exc)
