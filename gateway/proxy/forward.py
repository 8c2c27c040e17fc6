"""The streaming forward: client request → upstream → client, bodies never buffered.

Failures are mapped on purpose, one comment per case (README "Errors"):
before the response headers are sent they become problems (502, 504, 413);
after, the only honest signal left is to cut the client connection, so a
truncated body is never presented as complete.

Each attempt is in flight on its target from before sending until the
response is relayed (or the exchange failed), and its outcome is reported to
the upstream's balancer (an invalid answer counts as a failure; a request
refused or timed out while waiting for a free connection does not: the
target did nothing wrong). A request is retried only when its method is
idempotent and its body can be sent again as it was (none, or bytes in
hand), within `retries` and the upstream's retry budget:

- on another target, when it never reached one: refused, unreachable, no
  connection within connect_timeout, or turned away by a full line
  (`max_pending`);
- when its connection was lost after it was sent, before a complete response
  head, only if the route says `retry_after_send` (the target may have acted
  on it): on another target when there is one, else on the same. Otherwise
  that is a 502 `upstream_reset`, never resent (README "Limits and failure
  behaviour"); nginx's `proxy_next_upstream` and HAProxy's `retry-on` make
  the same choice an option.

A timeout or an invalid answer is never retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Protocol

import aiohttp
from multidict import CIMultiDict

from gateway import tracing
from gateway.config.schema.routes import Route
from gateway.config.schema.server import ServerConfig
from gateway.config.schema.upstreams import UpstreamConfig
from gateway.context import Outcome, RequestContext
from gateway.pipeline.forwarded import forwarded_for, is_trusted
from gateway.problems import GatewayError
from gateway.proxy.balancer import Attempt, Balancer, TargetState
from gateway.proxy.exchange import Incoming, Outgoing
from gateway.proxy.headers import downstream_response_headers, upstream_request_headers
from gateway.proxy.health import failure_text
from gateway.proxy.lean import (
    InvalidResponse,
    LeanResponse,
    PoolTimeout,
    TargetUnreachable,
    UpstreamBusy,
)
from gateway.proxy.metering import Meter
from gateway.proxy.pool import UpstreamPool

log = logging.getLogger("gateway.proxy")

READ_CHUNK = 64 * 1024
SMALL_BODY = READ_CHUNK  # bodies up to this, of declared length, go out with the head
NO_BODY_STATUSES = frozenset({204, 304})
# RFC 9110 §9.2.2: repeating these has the effect of sending them once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class BodyTooLarge(Exception):
    """A chunked request body grew past server.max_body while streaming."""


class _SendFailed(Exception):
    """An attempt failed before the response head arrived; `cause` says how."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def limited(
    stream: aiohttp.StreamReader, limit: int, ctx: RequestContext
) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in stream.iter_any():
        total += len(chunk)
        ctx.bytes_in = total  # the audit row's bytes in for a body without Content-Length
        if total > limit:
            ctx.outcome = Outcome.BODY_TOO_LARGE  # seen by the caller however aiohttp wraps it
            raise BodyTooLarge
        yield chunk


def no_healthy_target(pool: UpstreamPool) -> GatewayError:
    """503 when every target of the pool is ejected or failing its health checks."""
    return GatewayError.unavailable(
        f"upstream {pool.config.name} has no healthy target",
        code="no_healthy_upstream",
        retry_after=pool.balancer.retry_after(),
    )


def upstream_path(ctx: RequestContext, route: Route) -> str:
    """The normalised path after strip_prefix, which always leaves at least `/`."""
    path = ctx.path
    prefix = route.strip_prefix
    if prefix and prefix != "/":
        path = path[len(prefix) :]
        if not path.startswith("/"):
            path = "/" + path
    return path


def request_headers(
    request: Incoming, ctx: RequestContext, upstream: UpstreamConfig, server: ServerConfig
) -> CIMultiDict[str]:
    """The headers sent to `upstream`: the client's end-to-end ones, then the gateway's."""
    incoming = request.headers
    peer = request.remote or ""
    trusted = server.trusted_proxies
    from_trusted = is_trusted(peer, trusted)
    headers = upstream_request_headers(
        incoming.items(),
        incoming.get("Connection"),
        forward_authorization=upstream.forward_authorization,
        trusted_peer=from_trusted,
    )
    host = incoming.get("Host", "")
    headers["X-Forwarded-For"] = forwarded_for(peer, incoming.get("X-Forwarded-For"), trusted)
    if from_trusted:
        headers["X-Forwarded-Proto"] = incoming.get("X-Forwarded-Proto", request.scheme)
        headers["X-Forwarded-Host"] = incoming.get("X-Forwarded-Host", host)
    else:
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = host
    headers["X-Request-Id"] = ctx.request_id
    user = ctx.user
    if user is not None and ctx.runtime is not None:
        # Identity comes only from the verified token and the user's current
        # state; whatever X-User-* the client sent was dropped above.
        headers["X-User-Id"] = user.id
        headers["X-User-Roles"] = ctx.runtime.role_header.get(user.role, user.role)
    if upstream.pass_host and host:
        headers["Host"] = host
    return headers


def streamed_body(request: Incoming, ctx: RequestContext, max_body: int) -> object:
    """The request body to stream upstream (None: no body)."""
    if not request.body_exists:
        return None
    # A declared length is enforced by the HTTP parser; only a chunked body
    # has to be counted as it streams.
    if request.content_length is not None:
        return request.content
    return limited(request.content, max_body, ctx)


def check_length(request: Incoming, server: ServerConfig) -> None:
    length = request.content_length
    if length is not None and length > server.max_body:
        raise GatewayError.too_large(server.max_body)


async def forward(
    request: Incoming,
    ctx: RequestContext,
    route: Route,
    pool: UpstreamPool,
    server: ServerConfig,
    out: Outgoing,
) -> None:
    """Proxy a request to the route's upstream, answering through `out` (model routes:
    gateway/proxy/models.py)."""
    check_length(request, server)
    path = upstream_path(ctx, route) + ("?" + ctx.query if ctx.query else "")
    headers = request_headers(request, ctx, pool.config, server)
    body = streamed_body(request, ctx, server.max_body)
    await attempts(request, out, ctx, pool, server, path, headers, body)


class FellThrough(Exception):
    """An attempt failed in a way a fallback may answer; `error` is what the
    client gets if nothing else does."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.detail)
        self.error = error


async def attempts(
    request: Incoming,
    out: Outgoing,
    ctx: RequestContext,
    pool: UpstreamPool,
    server: ServerConfig,
    path: str,
    headers: CIMultiDict[str],
    body: object,
    meter: Meter | None = None,
    fallback: Fallback | None = None,
) -> None:
    """Send on a picked target, retrying on another where that cannot do harm.

    With a `fallback` (a model call that has somewhere else to go), a failure
    before the response head, a 429 or a 5xx head raises FellThrough instead
    of answering, as long as `fallback.possible()` says another model may try.
    """
    upstream = pool.config
    balancer = pool.balancer
    balancer.budget.request()
    attempt = pool.pick()
    if attempt is None:
        error = no_healthy_target(pool)
        if fallback is not None and fallback.possible():
            raise FellThrough(error)
        raise error

    # Only a request without a body, or with its body in hand, can be sent again as it was.
    replayable = request.method in IDEMPOTENT_METHODS and (body is None or isinstance(body, bytes))
    route = ctx.route
    after_send = replayable and route is not None and route.retry_after_send
    tried: list[TargetState] = []
    while True:
        tried.append(attempt.target)
        # the normalised path is already percent-encoded: send it as is
        target = pool.base_paths[attempt.target.index] + path
        try:
            return await _exchange(
                request, out, ctx, pool, attempt, target, headers, body, meter, fallback
            )
        except _SendFailed as failed:
            exc = failed.cause
            if replayable and len(tried) <= upstream.retries and balancer.budget.allows():
                retry = None
                if _never_reached(exc):
                    retry = pool.pick(exclude=tried)
                elif after_send and _lost_after_send(exc):
                    retry = pool.pick(exclude=tried) or pool.pick()
                if retry is not None:
                    balancer.budget.spend()
                    attempt = retry
                    continue
            error = _send_failure(exc, ctx, upstream.name, server.max_body)
            if error.status >= 500:
                _log_failure(exc, error, upstream.name, attempt.target.url)
            too_large = ctx.outcome is Outcome.BODY_TOO_LARGE
            if fallback is not None and not too_large and fallback.possible():
                raise FellThrough(error) from None
            raise error from None


class Fallback(Protocol):
    """What a model call tells an attempt about trying another model."""

    deadline: float  # time.monotonic() by which a response head must have come

    def possible(self) -> bool:
        """Whether another model may still be tried (attempts, time, a replayable body)."""
        ...


FALL_BACK_STATUSES = frozenset({429})  # and every 5xx


def falls_back(status: int) -> bool:
    """Whether a model's answer with this status is passed to its fallback."""
    return status >= 500 or status in FALL_BACK_STATUSES


def _never_reached(exc: BaseException) -> bool:
    """Whether the attempt failed before a single byte of the request was sent."""
    # Refused, unreachable, DNS failure, no connection within connect_timeout, or
    # turned away by a full line. A timeout or reset after the connection was
    # made is not: the target may have acted on the request. (Nor is the
    # `timeout` passing in line: the exchange's time is spent.)
    return isinstance(exc, TargetUnreachable | aiohttp.ConnectionTimeoutError | UpstreamBusy)


# Connection errors that are not a connection lost after sending.
_NOT_LOST = (TargetUnreachable, UpstreamBusy, aiohttp.ServerTimeoutError)
# Failures of the gateway's own pool, not of the target: never counted against it.
_LOCAL = (UpstreamBusy, PoolTimeout)


def _lost_after_send(exc: BaseException) -> bool:
    """Whether the connection closed or reset after the request went out, before a
    complete response head (the 502 upstream_reset of `_send_failure`)."""
    return isinstance(exc, aiohttp.ClientConnectionError) and not isinstance(exc, _NOT_LOST)


async def _exchange(
    request: Incoming,
    out: Outgoing,
    ctx: RequestContext,
    pool: UpstreamPool,
    attempt: Attempt,
    target: str,
    headers: CIMultiDict[str],
    body: object,
    meter: Meter | None = None,
    fallback: Fallback | None = None,
) -> None:
    """One attempt on one target: send, report the outcome, relay the response."""
    upstream = pool.config
    balancer = pool.balancer
    head_timeout = upstream.first_byte_timeout
    if fallback is not None:
        # The fallback budget bounds the wait for a head across every attempt.
        left = max(fallback.deadline - time.monotonic(), 0.001)
        head_timeout = min(head_timeout, left) if head_timeout else left
    traced = tracing.TRACING
    span = None
    if traced is not None:
        if ctx.span is not None:
            span = traced.attempt(ctx, upstream.name, attempt.target.url, request.method)
            parent = traced.traceparent(span)
            if parent is not None:
                headers["traceparent"] = parent  # the upstream's parent: this attempt
        elif ctx.traceparent is not None:
            headers["traceparent"] = ctx.traceparent  # not sampled: the trace goes on
    status: int | None = None
    failure: str | None = None
    sent = time.monotonic()
    try:
        try:
            if head_timeout:
                async with asyncio.timeout(head_timeout):
                    response = await pool.client.request(
                        attempt.target.index, request.method, target, headers, body
                    )
            else:
                response = await pool.client.request(
                    attempt.target.index, request.method, target, headers, body
                )
        except (aiohttp.ClientError, TimeoutError, BodyTooLarge) as exc:
            # the client's fault (too large), or the pool's (busy): not the target's
            if ctx.outcome != Outcome.BODY_TOO_LARGE and not isinstance(exc, _LOCAL):
                text = f"invalid HTTP: {exc}" if isinstance(exc, InvalidResponse) else None
                _report_failure(balancer, attempt, upstream.name, text or failure_text(exc))
                failure = _failure_kind(exc)
                attempted(ctx, upstream.name, time.monotonic() - sent, failure)
            raise _SendFailed(exc) from None
        status = response.status
        attempted(
            ctx, upstream.name, time.monotonic() - sent, "status_5xx" if status >= 500 else None
        )
        if balancer.answered(attempt, status):
            _log_ejection(balancer, attempt, upstream.name)
        if fallback is not None and falls_back(status) and fallback.possible():
            # Nothing has reached the client yet: drop this answer, try the next model.
            response.close()
            raise FellThrough(
                GatewayError.bad_gateway(
                    f"model {upstream.name} answered {status}", code="upstream_status"
                )
            )
        ctx.ttfb = time.monotonic() - ctx.started
        try:
            await _relay(request, out, ctx, response, upstream.name, attempt.target.url, meter)
        finally:
            if ctx.outcome in (Outcome.UPSTREAM_RESET, Outcome.UPSTREAM_TIMEOUT):
                _report_failure(balancer, attempt, upstream.name, "connection broke mid-response")
                failure = "reset" if ctx.outcome == Outcome.UPSTREAM_RESET else "timeout"
                attempted(ctx, upstream.name, None, failure)  # its head was timed above
    finally:
        balancer.finish(attempt)
        if span is not None and traced is not None:
            traced.end_attempt(span, status, failure)


def attempted(ctx: RequestContext, upstream: str, seconds: float | None, kind: str | None) -> None:
    """One attempt's time to its head (None: timed already) and failure kind, for the
    metrics the audit record reports (gateway/metrics.py)."""
    attempts = ctx.upstream_attempts
    if attempts is None:
        attempts = ctx.upstream_attempts = []
    attempts.append((upstream, seconds, kind))


def _failure_kind(exc: BaseException) -> str:
    if isinstance(exc, TargetUnreachable):
        return "connect"
    if isinstance(exc, InvalidResponse):
        return "invalid"
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout"
    return "reset"


def _report_failure(balancer: Balancer, attempt: Attempt, name: str, error: str) -> None:
    if balancer.failed(attempt, error):
        _log_ejection(balancer, attempt, name)


def _log_ejection(balancer: Balancer, attempt: Attempt, name: str) -> None:
    target = attempt.target
    log.warning(
        "upstream target ejected",
        extra={
            "upstream": name,
            "target": target.url,
            "ejections": target.ejections,
            "error": target.last_error,
        },
    )


def _log_failure(exc: BaseException, error: GatewayError, name: str, target: str) -> None:
    """The whole story of an upstream failure, for the operator: the target's address and
    the exception's text, which the client's problem never carries (README "Errors")."""
    log.warning(
        "upstream failed",
        extra={
            "upstream": name,
            "target": target,
            "code": error.code,
            "error": f"{type(exc).__name__}: {exc}",
        },
    )  # the request id is added by the log formatter (gateway/logs.py)


def _send_failure(
    exc: BaseException, ctx: RequestContext, name: str, max_body: int
) -> GatewayError:
    """Map a failure before the response head arrived to the problem the client gets.

    Each detail is a fixed text with the upstream's name from routes.yaml: never its
    address, the OS's or the TLS library's words or the exception's (`_log_failure`
    logs those)."""
    if ctx.outcome == Outcome.BODY_TOO_LARGE:
        # The chunked request body outgrew server.max_body mid-stream.
        return GatewayError.too_large(max_body)
    if isinstance(exc, TargetUnreachable):
        # Refused, unreachable, DNS or TLS failure: nothing reached the target.
        return GatewayError.bad_gateway(f"upstream {name} could not be reached")
    if isinstance(exc, UpstreamBusy):
        # Every connection busy and max_pending requests already waiting for one:
        # refused at once rather than queued without bound (Envoy's overflow 503).
        ctx.outcome = Outcome.UPSTREAM_BUSY
        return GatewayError.unavailable(
            f"upstream {name} is busy: every connection in use and max_pending requests waiting",
            code="upstream_busy",
            retry_after=1,
        )
    if isinstance(exc, InvalidResponse):
        # Garbage, a broken head or framing, a 101 nobody asked for: the
        # connection was closed, and the answer is never relayed.
        ctx.outcome = Outcome.UPSTREAM_INVALID
        return GatewayError.bad_gateway(
            f"upstream {name} answered with invalid HTTP", code="upstream_invalid"
        )
    if isinstance(exc, PoolTimeout):
        # `timeout` passed while waiting in line for a free connection.
        ctx.outcome = Outcome.UPSTREAM_TIMEOUT
        return GatewayError.gateway_timeout(f"no connection to upstream {name} was free in time")
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        # Connect, first-byte or whole-response deadline passed before the head.
        ctx.outcome = Outcome.UPSTREAM_TIMEOUT
        return GatewayError.gateway_timeout(f"upstream {name} did not answer in time")
    # Disconnected or reset before a complete response head: a broken upstream.
    ctx.outcome = Outcome.UPSTREAM_RESET
    return GatewayError.bad_gateway(
        f"upstream {name} closed the connection without a response", code="upstream_reset"
    )


async def _relay_small(
    out: Outgoing,
    ctx: RequestContext,
    upstream_response: LeanResponse,
    upstream_name: str,
    headers: CIMultiDict[str],
    meter: Meter | None,
) -> None:
    """A small body of declared length, read whole and sent with the head in one write
    (a model's JSON answer too, its usage read from it first).

    (A streamed response writes its head and its first chunk separately: one
    more system call per request.) Nothing has reached the client while the
    body is read, so a failure here is still a clean 502/504, never a cut."""
    try:
        body = await upstream_response.content.read()
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
        upstream_response.close()
        log.warning(
            "upstream broke mid-response",
            extra={"upstream": upstream_name, "error": f"{type(exc).__name__}: {exc}"},
        )
        if isinstance(exc, TimeoutError):
            ctx.outcome = Outcome.UPSTREAM_TIMEOUT
            raise GatewayError.gateway_timeout(
                f"upstream {upstream_name} did not send its whole response in time"
            ) from None
        ctx.outcome = Outcome.UPSTREAM_RESET
        raise GatewayError.bad_gateway(
            f"upstream {upstream_name} closed the connection mid-response", code="upstream_reset"
        ) from None
    upstream_response.release()
    if meter is not None:  # a model's JSON answer: its usage read on the way
        body = meter.feed(body) + meter.finish()
        ctx.usage = meter.usage
    await out.whole(upstream_response.status, upstream_response.reason, headers, body)


async def _relay(
    request: Incoming,
    out: Outgoing,
    ctx: RequestContext,
    upstream_response: LeanResponse,
    upstream_name: str,
    target: str,
    meter: Meter | None = None,
) -> None:
    headers = downstream_response_headers(
        upstream_response.headers.items(), upstream_response.headers.get("Connection")
    )
    if ctx.model is not None:
        headers["X-Gateway-Model"] = ctx.model  # the model that answered, whatever it claims
    declared = upstream_response.content_length
    if meter is not None and meter.start(upstream_response.headers.get("Content-Type", "")):
        declared = None  # an event may be stripped: the length is no longer the upstream's
    if (
        declared is not None
        and declared <= SMALL_BODY
        and request.method != "HEAD"
        and upstream_response.status not in NO_BODY_STATUSES
        and (meter is None or not meter.streaming)  # events pass one by one, as they come
    ):
        await _relay_small(out, ctx, upstream_response, upstream_name, headers, meter)
        return
    try:
        await out.start(upstream_response.status, upstream_response.reason, headers, declared)
        if meter is None:
            async for chunk in upstream_response.content.iter_chunked(READ_CHUNK):
                await out.write(chunk)
        else:
            async for chunk in upstream_response.content.iter_chunked(READ_CHUNK):
                fed = meter.feed(chunk)  # the same bytes, at once, but an injected usage event
                if fed:
                    await out.write(fed)
            rest = meter.finish()
            ctx.usage = meter.usage
            if rest:
                await out.write(rest)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
        if (
            isinstance(exc, ConnectionResetError | aiohttp.ClientConnectionResetError)
            and out.client_gone()
        ):
            # The client went away (499 in the log); the upstream connection
            # cannot be reused mid-body.
            ctx.outcome = Outcome.CLIENT_GONE
        else:
            # The upstream broke or timed out mid-body: cut the client
            # connection so the truncated body cannot pass for a whole one.
            ctx.outcome = Outcome.UPSTREAM_RESET
            log.warning(
                "upstream broke mid-response",
                extra={
                    "request_id": ctx.request_id,
                    "upstream": upstream_name,
                    "target": target,
                    "error": type(exc).__name__,
                },
            )
        upstream_response.close()
        out.cut()
        return
    except BaseException:
        upstream_response.close()
        raise
    upstream_response.release()
    await out.finish()
