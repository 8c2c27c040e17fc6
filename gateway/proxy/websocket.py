"""WebSocket proxying (RFC 6455) on routes with `websocket: true` (README "WebSockets").

The upgrade request has passed the whole chain like any request (route,
authentication, policy, rate limit); only then does the gateway open a
connection to a target of the route's upstream and send the handshake on,
without the `access_token` query parameter. The upstream's answer decides: a
101 turns both connections into one tunnel; anything else (a 403, a 404) is
relayed as the answer.

In the tunnel, bytes pass as they arrive, in both directions, never a whole
message: a `Frames` reader per direction follows only the frame headers
(RFC 6455 §5.2) and lets payload bytes through without keeping them, so a
10 MiB message costs the gateway no more memory than a 10-byte one, and the
gateway knows where a frame ends when it must put a close frame of its own
in. Text, binary, ping, pong and close frames, their codes and extensions
(permessage-deflate) pass untouched. Backpressure is TCP's: a direction whose
receiver reads slowly stops reading from its sender.

The gateway closes a tunnel itself, with a close frame each way at a frame
boundary:
- 1008 (policy violation) when the caller, judged again every RECHECK
  seconds, fails: the token expired or was revoked, the user was deactivated,
  or its role no longer passes the route. The identity store answers, so with
  a shared Redis a logout on one instance closes the tunnel on every other;
- 1001 (going away) after the route's websocket_idle_timeout without a byte
  either way, after its websocket_max_duration, and when the gateway drains.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from aiohttp.http_writer import StreamWriter

from gateway.context import Outcome, RequestContext
from gateway.pipeline.authentication import without_query_token
from gateway.pipeline.verdict import Deny
from gateway.problems import GatewayError
from gateway.proxy.forward import (
    attempted,
    no_healthy_target,
    request_headers,
    upstream_path,
)
from gateway.proxy.headers import downstream_response_headers

if TYPE_CHECKING:
    from gateway.config.schema.routes import Route
    from gateway.config.schema.server import ServerConfig
    from gateway.proxy.pool import UpstreamPool

log = logging.getLogger("gateway.websocket")

RECHECK = 2.0  # seconds between two judgements of an open tunnel's caller (at most 5 s late)
HIGH_WATER = 256 * 1024  # bytes buffered towards one side before its sender is paused
NOT_UPGRADED_BODY = 1024 * 1024  # the most of a non-101 answer's body relayed
CLOSE_WAIT = 2.0  # seconds the gateway waits for the close reply after its own close
POLICY_VIOLATION = 1008
GOING_AWAY = 1001

# The caller judged again: None while it may stay (gateway/pipeline/admission.py).
Recheck = Callable[[RequestContext, float], Awaitable[Deny | None]]


class Frames:
    """The frame boundaries of one direction (RFC 6455 §5.2); payloads are not kept."""

    __slots__ = ("_head", "_left", "closed")

    def __init__(self) -> None:
        self._head = b""  # the start of a frame header split across reads
        self._left = 0  # payload bytes of the current frame still to come
        self.closed = False  # a close frame has begun

    def at_boundary(self) -> bool:
        return self._left == 0 and not self._head

    def scan(self, data: bytes, stop: bool = False) -> int:
        """How many bytes of `data` to pass on: all of them, or with `stop`, those
        before the first frame boundary (0 when at one now)."""
        i, n = 0, len(data)
        while i < n:
            if self._left:
                take = min(self._left, n - i)
                self._left -= take
                i += take
                continue
            if stop and not self._head:
                return i
            had = len(self._head)
            head = self._head + data[i : i + 14 - had]
            need = _header_length(head)
            if need is None or len(head) < need:
                self._head = head  # the rest of data is the start of a header
                return n
            i += need - had
            self._head = b""
            length = head[1] & 0x7F
            if length == 126:
                length = int.from_bytes(head[2:4], "big")
            elif length == 127:
                length = int.from_bytes(head[2:10], "big")
            self._left = length
            if head[0] & 0x0F == 0x8:
                self.closed = True
        return n


def _header_length(head: bytes) -> int | None:
    if len(head) < 2:
        return None
    length = head[1] & 0x7F
    extended = 2 if length == 126 else 8 if length == 127 else 0
    return 2 + extended + (4 if head[1] & 0x80 else 0)


def close_frame(code: int, reason: str, masked: bool) -> bytes:
    """A close frame (RFC 6455 §5.5.1); masked as a client's must be."""
    payload = code.to_bytes(2, "big") + reason.encode()[:123]
    if not masked:
        return bytes((0x88, len(payload))) + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((0x88, 0x80 | len(payload))) + key + body


class _FromUpstream:
    """The upstream connection's parser and payload after its 101 (aiohttp's client
    protocol feeds it every byte, as it feeds its own WebSocket reader)."""

    __slots__ = ("_tunnel",)

    def __init__(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._tunnel.from_upstream(data)
        return False, b""

    def feed_eof(self) -> None:
        self._tunnel.end()

    def is_eof(self) -> bool:
        return self._tunnel.ended

    def set_exception(self, exc: BaseException, exc_cause: BaseException | None = None) -> None:
        self._tunnel.end()


class _FromClient:
    """The client connection's parser after the 101 (aiohttp's server protocol)."""

    __slots__ = ("_tunnel",)

    def __init__(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._tunnel.from_client(data)
        return False, b""

    def feed_eof(self) -> None:
        self._tunnel.end()


class Tunnel:
    """Both connections of one WebSocket after the 101, and the gateway's own closes."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: asyncio.Transport,
        client_writer: StreamWriter,
        upstream: asyncio.Transport,
        upstream_writer: StreamWriter,
    ) -> None:
        self._loop = loop
        self._client = client
        self._client_writer = client_writer
        self._upstream = upstream
        self._upstream_writer = upstream_writer
        self._client_frames = Frames()
        self._upstream_frames = Frames()
        self.bytes_in = 0  # from the client
        self.bytes_out = 0  # to the client
        self.last_byte = loop.time()
        self.ended = False
        self.done: asyncio.Future[None] = loop.create_future()
        # the gateway's own close: (code, reason) once decided
        self.closing: tuple[int, str] | None = None
        self._client_cut = False  # the client's bytes stop here (our close went upstream)
        self._upstream_cut = False  # the upstream's bytes stop here (our close went out)
        self._waits: set[asyncio.Task[None]] = set()

    # --- bytes ----------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.last_byte = self._loop.time()
        frames = self._client_frames
        if self._client_cut:
            frames.scan(data)  # only waiting for the client's close reply
            if frames.closed:
                self.end()
            return
        stop = self.closing is not None
        passed = frames.scan(data, stop)
        if passed:
            self._upstream.write(data if passed == len(data) else data[:passed])
        if stop and frames.at_boundary():
            self._cut_client()
            frames.scan(data[passed:])
        if self._upstream.get_write_buffer_size() > HIGH_WATER:
            self._hold(self._client, self._upstream_writer)

    def from_upstream(self, data: bytes) -> None:
        self.last_byte = self._loop.time()
        if self._upstream_cut:
            return  # our close went to the client; the rest is not theirs to read
        frames = self._upstream_frames
        stop = self.closing is not None
        passed = frames.scan(data, stop)
        if passed:
            self._client.write(data if passed == len(data) else data[:passed])
            self.bytes_out += passed
        if stop and frames.at_boundary():
            self._cut_upstream()
        if self._client.get_write_buffer_size() > HIGH_WATER:
            self._hold(self._upstream, self._client_writer)

    def _hold(self, sender: asyncio.Transport, receiver: StreamWriter) -> None:
        """Stop reading from `sender` until `receiver`'s buffer drains (TCP backpressure)."""
        if not sender.is_reading():
            return
        sender.pause_reading()

        async def resume() -> None:
            try:
                await receiver.drain()
            except (ConnectionError, RuntimeError):
                self.end()
                return
            if not sender.is_closing():
                sender.resume_reading()

        task = self._loop.create_task(resume())
        self._waits.add(task)
        task.add_done_callback(self._waits.discard)

    # --- the gateway's own close ----------------------------------------------

    def close(self, code: int, reason: str) -> None:
        """Close both sides with `code` at their next frame boundary."""
        if self.closing is not None or self.ended:
            return
        self.closing = (code, reason)
        if self._upstream_frames.at_boundary():
            self._cut_upstream()
        if self._client_frames.at_boundary():
            self._cut_client()
        # A side that never reaches a boundary (a peer stalled mid-frame) is cut anyway.
        self._loop.call_later(CLOSE_WAIT, self.end)

    def _cut_upstream(self) -> None:
        """No more of the upstream's bytes for the client: our close frame goes out."""
        if self._upstream_cut or self.closing is None:
            return
        self._upstream_cut = True
        frame = close_frame(*self.closing, masked=False)
        self._client.write(frame)
        self.bytes_out += len(frame)

    def _cut_client(self) -> None:
        """No more of the client's bytes for the upstream: a masked close goes to it."""
        if self._client_cut or self.closing is None:
            return
        self._client_cut = True
        self._upstream.write(close_frame(GOING_AWAY, "client connection closed", masked=True))

    def end(self) -> None:
        """Both connections close (idempotent)."""
        if self.ended:
            return
        self.ended = True
        for task in self._waits:
            task.cancel()
        self._upstream.close()
        self._client.close()
        if not self.done.done():
            self.done.set_result(None)


async def proxy_websocket(
    request: web.Request,
    ctx: RequestContext,
    route: Route,
    pool: UpstreamPool,
    server: ServerConfig,
    recheck: Recheck,
    on_open: Callable[[int], None],
    draining: Callable[[], bool],
) -> web.StreamResponse:
    """Proxy one WebSocket upgrade to `pool`'s upstream; returns once it has closed.

    `recheck` judges the caller again; `on_open(+1/-1)` counts open tunnels;
    `draining()`: the gateway is shutting down (close with 1001)."""
    upstream = pool.config
    attempt = pool.pick()
    if attempt is None:
        raise no_healthy_target(pool)
    target = pool.bases[attempt.target.index] + upstream_path(ctx, route)
    query = without_query_token(ctx.query)
    if query:
        target += "?" + query
    headers = request_headers(request, ctx, upstream, server)
    headers["Connection"] = "Upgrade"
    headers["Upgrade"] = request.headers.get("Upgrade", "websocket")
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=upstream.connect_timeout or None,
        sock_read=upstream.first_byte_timeout or upstream.timeout or None,
    )
    sent = time.monotonic()
    try:
        try:
            response = await pool.session.get(
                target, headers=headers, timeout=timeout, allow_redirects=False
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            timed_out = isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError)
            kind = "timeout" if timed_out else "connect"
            attempted(ctx, upstream.name, time.monotonic() - sent, kind)
            if pool.balancer.failed(attempt, str(exc) or type(exc).__name__):
                log.warning("upstream target ejected", extra={"upstream": upstream.name})
            # the address and the exception's words for the log, never for the client
            log.warning(
                "upstream failed",
                extra={
                    "upstream": upstream.name,
                    "target": attempt.target.url,
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )
            if timed_out:
                raise GatewayError.gateway_timeout(
                    f"upstream {upstream.name} did not answer the WebSocket handshake in time"
                ) from None
            raise GatewayError.bad_gateway(
                f"upstream {upstream.name} could not be reached for the WebSocket handshake"
            ) from None
        failed = "status_5xx" if response.status >= 500 else None
        attempted(ctx, upstream.name, time.monotonic() - sent, failed)
        pool.balancer.answered(attempt, response.status)
        ctx.ttfb = time.monotonic() - ctx.started
        if response.status != 101:
            return await _not_upgraded(response, upstream.name)
        return await _tunnel(request, ctx, route, response, recheck, on_open, draining)
    finally:
        pool.balancer.finish(attempt)


async def _not_upgraded(response: aiohttp.ClientResponse, name: str) -> web.StreamResponse:
    """The upstream refused the upgrade (or answered something else): relayed as is."""
    try:
        body = await response.content.read(NOT_UPGRADED_BODY + 1)
    except (aiohttp.ClientError, TimeoutError):
        raise GatewayError.bad_gateway(
            f"upstream {name} closed the connection mid-answer", code="upstream_reset"
        ) from None
    finally:
        response.close()
    if len(body) > NOT_UPGRADED_BODY:
        raise GatewayError.bad_gateway(
            f"upstream {name} refused the WebSocket with an answer over {NOT_UPGRADED_BODY} bytes",
            code="upstream_invalid",
        )
    headers = downstream_response_headers(
        response.headers.items(), response.headers.get("Connection")
    )
    return web.Response(status=response.status, headers=headers, body=body)


async def _tunnel(
    request: web.Request,
    ctx: RequestContext,
    route: Route,
    response: aiohttp.ClientResponse,
    recheck: Recheck,
    on_open: Callable[[int], None],
    draining: Callable[[], bool],
) -> web.StreamResponse:
    connection = response.connection
    client = request.transport
    if connection is None or connection.transport is None or client is None:
        response.close()
        raise GatewayError.bad_gateway("the WebSocket's connections closed at the handshake")
    upgrade = response.headers.get("Upgrade", "")
    if "websocket" not in upgrade.lower():
        response.close()
        raise GatewayError.bad_gateway(
            "the upstream answered 101 without Upgrade: websocket", code="upstream_invalid"
        )
    protocol: Any = connection.protocol
    upstream = connection.transport
    loop = asyncio.get_running_loop()
    tunnel = Tunnel(
        loop, client, StreamWriter(request.protocol, loop), upstream, StreamWriter(protocol, loop)
    )
    # The 101 as the upstream gave it (Sec-WebSocket-Accept, -Protocol, -Extensions),
    # without its hop-by-hop headers but the two that make it an upgrade.
    headers = downstream_response_headers(
        response.headers.items(), response.headers.get("Connection")
    )
    headers["Upgrade"] = upgrade
    headers["Connection"] = "Upgrade"
    switched = web.StreamResponse(status=101, reason="Switching Protocols", headers=headers)
    await switched.prepare(request)
    request.protocol.keep_alive(False)
    protocol.read_timeout = None  # the tunnel's own idle timeout applies from here
    protocol.set_parser(_FromUpstream(tunnel), _FromUpstream(tunnel))
    request.protocol.set_parser(_FromClient(tunnel))  # type: ignore[arg-type]
    on_open(1)
    watch = loop.create_task(_watch(tunnel, ctx, route, recheck, draining))
    try:
        await asyncio.shield(tunnel.done)
    except asyncio.CancelledError:
        # A server that cancels handlers when their client's connection is lost
        # (aiohttp's handler_cancellation) does so as a tunnel ends: a WebSocket's
        # end, not a client gone mid-answer. Any other cancellation goes on.
        current = asyncio.current_task()
        if not (tunnel.ended or client.is_closing()) or current is None:
            raise
        current.uncancel()
    finally:
        watch.cancel()
        tunnel.end()
        response.close()
        on_open(-1)
        ctx.bytes_in = tunnel.bytes_in
        # What the audit row counts as sent: the 101 head plus the tunnel's bytes.
        request.writer.output_size += tunnel.bytes_out
    return switched


async def _watch(
    tunnel: Tunnel,
    ctx: RequestContext,
    route: Route,
    recheck: Recheck,
    draining: Callable[[], bool],
) -> None:
    """Every RECHECK seconds: the caller judged again, idle time, age and draining."""
    loop = asyncio.get_running_loop()
    opened = loop.time()
    while not tunnel.ended:
        await asyncio.sleep(RECHECK)
        now = loop.time()
        if draining():
            ctx.outcome = Outcome.WS_DRAINING
            tunnel.close(GOING_AWAY, "the gateway is shutting down")
        elif now - tunnel.last_byte >= route.websocket_idle_timeout:
            ctx.outcome = Outcome.WS_IDLE
            tunnel.close(GOING_AWAY, "idle")
        elif now - opened >= route.websocket_max_duration:
            ctx.outcome = Outcome.WS_MAX_DURATION
            tunnel.close(GOING_AWAY, "open too long")
        else:
            try:
                verdict = await recheck(ctx, time.time())
            except Exception:  # a store that failed: judged again at the next tick
                log.exception("websocket recheck failed")
                continue
            if verdict is not None:
                # The client reads the reason's code in the close frame; the log says why.
                ctx.outcome = Outcome.WS_POLICY
                log.info(
                    "websocket closed by policy",
                    extra={"request_id": ctx.request_id, "code": verdict.code},
                )
                tunnel.close(POLICY_VIOLATION, verdict.code)
        if tunnel.closing is not None:
            await asyncio.shield(tunnel.done)
            return
