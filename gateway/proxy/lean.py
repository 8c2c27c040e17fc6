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
open at once (further requests wait for one), idle ones closed after
KEEPALIVE seconds. A connection goes back to the list only when its response
was read to the end, its body was sent whole and neither side asked to close.

Failures are aiohttp's exception types, so the proxy maps them as before:
`TargetUnreachable` (a ClientConnectorError-like: nothing was sent),
`aiohttp.ConnectionTimeoutError` (no connection within connect_timeout),
`aiohttp.ServerTimeoutError` (the whole exchange passed `timeout`),
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
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config.schema import UpstreamTarget

KEEPALIVE = 30.0  # seconds an idle upstream connection is kept
INLINE_BODY = 64 * 1024  # bodies up to this are written with the head; larger ones by a task
READ_BUFSIZE = 2**16


class TargetUnreachable(aiohttp.ClientConnectionError):
    """Refused, unreachable, a DNS or TLS handshake failure: nothing was sent."""

    def __init__(self, target: str, os_error: OSError) -> None:
        super().__init__(f"cannot connect to {target}: {os_error.strerror or os_error}")
        self.os_error = os_error


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
    ) -> None:
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

    async def acquire(self) -> ResponseHandler:
        idle = self.idle
        if idle:
            now = time.monotonic()
            while idle:
                protocol, since = idle.pop()
                if protocol.is_connected() and now - since < KEEPALIVE:
                    self.busy += 1
                    return protocol
                protocol.close()  # closed by the target meanwhile, or idle too long
        while self.limit and self.busy >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # the slot it was given passes to the next waiter
                else:
                    with contextlib.suppress(ValueError):
                        self.waiters.remove(waiter)
                raise
            if self.idle:
                return await self.acquire()
        self.busy += 1
        try:
            return await self._connect()
        except BaseException:
            self.busy -= 1
            self._wake()
            raise

    async def _connect(self) -> ResponseHandler:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
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
    ) -> None:
        self._targets = [_Connections(t, limit, connect_timeout, ssl_context) for t in targets]
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
        client's Content-Length when `headers` has one, else chunked)."""
        connections = self._targets[index]
        # RFC 9112 §9.3.1, as aiohttp does: an idempotent request whose connection
        # closed before any response came is sent once more, on another connection
        # (a keep-alive connection the target had just closed, or a target that went
        # away: the new connection then fails to open, and the proxy may try
        # another target).
        again = method in _IDEMPOTENT and (body is None or isinstance(body, bytes))
        while True:
            protocol = await connections.acquire()
            try:
                return await self._send(connections, protocol, index, method, target, headers, body)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                if not again:
                    raise
                again = False

    async def _send(
        self,
        connections: _Connections,
        protocol: ResponseHandler,
        index: int,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: object,
    ) -> LeanResponse:
        loop = asyncio.get_running_loop()
        deadline: asyncio.TimerHandle | None = None
        try:
            if self._timeout is not None:
                deadline = loop.call_later(self._timeout, _expire, protocol)
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
                while 100 <= message.code < 200 and message.code != 101:
                    message, payload = await protocol.read()  # 1xx: the real head follows
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
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


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
