"""The streaming forward: client request → upstream → client, bodies never buffered.

Failures are mapped on purpose, one comment per case (contract section 5):
before the response headers are sent they become problems (502, 504, 413);
after, the only honest signal left is to cut the client connection, so a
truncated body is never presented as complete.

Each attempt is in flight on its target from before sending until the
response is relayed (or the exchange failed), and its outcome is reported to
the upstream's balancer. A request is retried on another target only when
retrying cannot do harm: an idempotent method, no body to replay, and a
connection that failed, so the request never reached a target; within
`retries` and the upstream's retry budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.config.schema import RateLimitConfig, Route, ServerConfig
from gateway.context import SERVICES, RequestContext
from gateway.forwarded import forwarded_for, is_trusted
from gateway.middleware.rate_limit import counted
from gateway.problems import GatewayError
from gateway.proxy.balancer import Attempt, Balancer, TargetState
from gateway.proxy.headers import downstream_response_headers, upstream_request_headers
from gateway.proxy.health import failure_text
from gateway.proxy.metering import Meter
from gateway.proxy.pool import UpstreamPool
from gateway.state.limiter import LocalLimiter
from gateway.usage import MAX_PARSE, UsageReader

log = logging.getLogger("gateway.proxy")

READ_CHUNK = 64 * 1024
# RFC 9110 §9.2.2: repeating these has the effect of sending them once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class BodyTooLarge(Exception):
    """A chunked request body grew past server.max_body while streaming."""


class _SendFailed(Exception):
    """An attempt failed before the response head arrived; `cause` says how."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def _limited(
    stream: aiohttp.StreamReader, limit: int, ctx: RequestContext
) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in stream.iter_any():
        total += len(chunk)
        ctx.bytes_in = total  # the audit row's bytes in for a body without Content-Length
        if total > limit:
            ctx.outcome = "body_too_large"  # seen by the caller however aiohttp wraps it
            raise BodyTooLarge
        yield chunk


def upstream_path(ctx: RequestContext, route: Route) -> str:
    """The normalised path after strip_prefix, which always leaves at least `/`."""
    path = ctx.path
    prefix = route.strip_prefix
    if prefix and prefix != "/":
        path = path[len(prefix) :]
        if not path.startswith("/"):
            path = "/" + path
    return path


async def forward(
    request: web.Request,
    ctx: RequestContext,
    route: Route,
    pool: UpstreamPool,
    server: ServerConfig,
) -> web.StreamResponse:
    upstream = pool.config
    length = request.content_length
    if length is not None and length > server.max_body:
        raise GatewayError.too_large(server.max_body)

    path = upstream_path(ctx, route) + ("?" + ctx.query if ctx.query else "")

    incoming = request.headers
    headers = upstream_request_headers(
        incoming.items(),
        incoming.get("Connection"),
        forward_authorization=upstream.forward_authorization,
    )
    peer = request.remote or ""
    trusted = server.trusted_proxies
    from_trusted = is_trusted(peer, trusted)
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

    body: object = None
    meter: Meter | None = None
    reader = ctx.runtime.readers.get(route.model) if route.model and ctx.runtime else None
    quota: _Quota | None = None
    if reader is not None:
        body, meter = await _metered_request(request, reader, headers, length, server, ctx)
        quota = await _reserve(request, ctx, route, meter)
    elif request.body_exists:
        # A declared length is enforced by the HTTP parser; only a chunked body
        # has to be counted as it streams.
        body = (
            request.content
            if length is not None
            else _limited(request.content, server.max_body, ctx)
        )

    if quota is None:
        return await _attempts(request, ctx, pool, server, path, headers, body, meter)
    try:
        response = await _attempts(request, ctx, pool, server, path, headers, body, meter)
    except Exception:
        # No response (502, 504, 503, ...): the whole reservation is given back.
        # (A cancelled call keeps its reservation as the charge.)
        await quota.settle(-quota.reserved)
        raise
    # Charged from the usage the model reported; unknown usage (or a response
    # cut short) keeps the reservation as the charge.
    usage = ctx.usage
    total = usage.total_tokens if usage is not None else None
    await quota.settle(0 if total is None else total - quota.reserved)
    return response


async def _attempts(
    request: web.Request,
    ctx: RequestContext,
    pool: UpstreamPool,
    server: ServerConfig,
    path: str,
    headers: CIMultiDict[str],
    body: object,
    meter: Meter | None,
) -> web.StreamResponse:
    """Send on a picked target, retrying on another where that cannot do harm."""
    upstream = pool.config
    balancer = pool.balancer
    balancer.budget.request()
    attempt = pool.pick()
    if attempt is None:
        # Every target is ejected or failing its health checks.
        raise GatewayError.unavailable(
            f"upstream {upstream.name} has no healthy target",
            code="no_healthy_upstream",
            retry_after=balancer.retry_after(),
        )

    # Only a request without a body can be sent again as it was.
    replayable = request.method in IDEMPOTENT_METHODS and body is None
    tried: list[TargetState] = []
    while True:
        tried.append(attempt.target)
        # the normalised path is already percent-encoded: send it as is
        url = URL(pool.bases[attempt.target.index] + path, encoded=True)
        try:
            return await _exchange(request, ctx, pool, attempt, url, headers, body, meter)
        except _SendFailed as failed:
            exc = failed.cause
            if (
                replayable
                and _never_reached(exc)
                and len(tried) <= upstream.retries
                and balancer.budget.allows()
            ):
                retry = pool.pick(exclude=tried)
                if retry is not None:
                    balancer.budget.spend()
                    attempt = retry
                    continue
            raise _send_failure(exc, ctx, upstream.name, server.max_body) from None


class _Quota:
    """A token reservation on one limiter key, to settle once the call is over."""

    __slots__ = ("key", "limit", "limiter", "reserved")

    def __init__(
        self, limiter: LocalLimiter, key: str, limit: RateLimitConfig, reserved: int
    ) -> None:
        self.limiter = limiter
        self.key = key
        self.limit = limit
        self.reserved = reserved

    async def settle(self, delta: int) -> None:
        rate = self.limit.rate
        await self.limiter.settle(self.key, rate.limit, rate.period, delta)


async def _reserve(
    request: web.Request, ctx: RequestContext, route: Route, meter: Meter
) -> _Quota | None:
    """Check the model's token quota before the call, reserving tokens up front."""
    runtime = ctx.runtime
    if runtime is None or route.model is None:
        return None
    model = runtime.config.models.get(route.model)
    limit = model.token_limit if model is not None else None
    if limit is None:
        return None
    plan = meter.plan
    # The stated max_tokens bounds the completion, so that much is reserved and
    # concurrent calls cannot overshoot by more than their own size. Without it
    # the reservation is minimal (1 token): the quota must have something left,
    # and the real usage is charged when the call is over.
    reserve = plan.max_tokens if plan is not None and plan.max_tokens else 1
    rate = limit.rate
    key = f"tokens|{route.model}|{counted(limit.key, ctx, request)}"
    limiter = request.app[SERVICES].limiter
    decision = await limiter.hit(key, rate.limit, rate.period, cost=reserve)
    ctx.rate_headers = decision.headers()  # RateLimit-* counted in tokens
    if not decision.allowed:
        raise GatewayError(
            429,
            "token_quota",
            f"token quota {rate} by {limit.key} on model {route.model} is spent "
            f"(this call reserves {reserve} tokens); retry in {decision.retry_after}s",
        )
    return _Quota(limiter, key, limit, reserve)


async def _metered_request(
    request: web.Request,
    reader: UsageReader,
    headers: CIMultiDict[str],
    length: int | None,
    server: ServerConfig,
    ctx: RequestContext,
) -> tuple[object, Meter]:
    """A model call with a usage format: its JSON body is read (it is small) so the
    reader can plan it, e.g. ask a streaming upstream to report usage."""
    if not request.body_exists:
        return None, Meter(reader, None)
    if length is None or length > MAX_PARSE:
        # Too large (or chunked) to read first: streamed through, usage from the response only.
        body = (
            request.content
            if length is not None
            else _limited(request.content, server.max_body, ctx)
        )
        return body, Meter(reader, None)
    raw = await request.read()
    plan = reader.request_hook(raw, request.headers.get("Content-Type", ""))
    if plan.body is not raw:
        headers["Content-Length"] = str(len(plan.body))
    return plan.body, Meter(reader, plan)


def _never_reached(exc: BaseException) -> bool:
    """Whether the attempt failed before a single byte of the request was sent."""
    # Refused, unreachable, DNS failure, or no connection within connect_timeout.
    # A timeout or reset after the connection was made is not: the target may
    # have acted on the request.
    return isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)


async def _exchange(
    request: web.Request,
    ctx: RequestContext,
    pool: UpstreamPool,
    attempt: Attempt,
    url: URL,
    headers: object,
    body: object,
    meter: Meter | None = None,
) -> web.StreamResponse:
    """One attempt on one target: send, report the outcome, relay the response."""
    upstream = pool.config
    balancer = pool.balancer
    try:
        try:
            if upstream.first_byte_timeout:
                async with asyncio.timeout(upstream.first_byte_timeout):
                    response = await _send(pool, request.method, url, headers, body)
            else:
                response = await _send(pool, request.method, url, headers, body)
        except (aiohttp.ClientError, TimeoutError, BodyTooLarge) as exc:
            if ctx.outcome != "body_too_large":  # the client's fault, not the target's
                _report_failure(balancer, attempt, upstream.name, failure_text(exc))
            raise _SendFailed(exc) from None
        ctx.ttfb = time.monotonic() - ctx.started
        if balancer.answered(attempt, response.status):
            _log_ejection(balancer, attempt, upstream.name)
        relayed = await _relay(request, ctx, response, upstream.name, attempt.target.url, meter)
        if ctx.outcome == "upstream_reset":
            _report_failure(balancer, attempt, upstream.name, "connection broke mid-response")
        return relayed
    finally:
        balancer.finish(attempt)


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


async def _send(
    pool: UpstreamPool, method: str, url: URL, headers: object, body: object
) -> aiohttp.ClientResponse:
    return await pool.session.request(
        method,
        url,
        headers=headers,  # type: ignore[arg-type]
        data=body,
        allow_redirects=False,  # a redirect is the client's to follow, not ours
        compress=None,
    )


def _send_failure(
    exc: BaseException, ctx: RequestContext, name: str, max_body: int
) -> GatewayError:
    """Map a failure before the response head arrived to the problem the client gets."""
    if ctx.outcome == "body_too_large":
        # The chunked request body outgrew server.max_body mid-stream.
        return GatewayError.too_large(max_body)
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Refused, unreachable or DNS failure: nothing reached the target.
        reason = exc.os_error.strerror or "connect failed"
        return GatewayError.bad_gateway(f"upstream {name} refused the connection ({reason})")
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        # Connect, first-byte or whole-response deadline passed before the head.
        ctx.outcome = "upstream_timeout"
        return GatewayError.gateway_timeout(f"upstream {name} did not answer in time")
    # Disconnected or reset before a complete response head: a broken upstream.
    ctx.outcome = "upstream_reset"
    return GatewayError.bad_gateway(
        f"upstream {name} closed the connection without a response", code="upstream_reset"
    )


async def _relay(
    request: web.Request,
    ctx: RequestContext,
    upstream_response: aiohttp.ClientResponse,
    upstream_name: str,
    target: str,
    meter: Meter | None = None,
) -> web.StreamResponse:
    response = web.StreamResponse(
        status=upstream_response.status,
        reason=upstream_response.reason,
        headers=downstream_response_headers(
            upstream_response.headers.items(), upstream_response.headers.get("Connection")
        ),
    )
    declared = upstream_response.content_length
    if meter is not None and meter.start(upstream_response.headers.get("Content-Type", "")):
        declared = None  # an event may be stripped: the length is no longer the upstream's
    if declared is not None:
        response.content_length = declared
    try:
        await response.prepare(request)
        if meter is None:
            async for chunk in upstream_response.content.iter_chunked(READ_CHUNK):
                await response.write(chunk)
        else:
            async for chunk in upstream_response.content.iter_chunked(READ_CHUNK):
                out = meter.feed(chunk)  # the same bytes, at once, but an injected usage event
                if out:
                    await response.write(out)
            rest = meter.finish()
            ctx.usage = meter.usage
            if rest:
                await response.write(rest)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
        if isinstance(exc, ConnectionResetError | aiohttp.ClientConnectionResetError) and (
            request.transport is None or request.transport.is_closing()
        ):
            # The client went away (499 in the log); the upstream connection
            # cannot be reused mid-body.
            ctx.outcome = "client_gone"
        else:
            # The upstream broke or timed out mid-body: cut the client
            # connection so the truncated body cannot pass for a whole one.
            ctx.outcome = "upstream_reset"
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
        if request.transport is not None:
            request.transport.abort()
        return response
    except BaseException:
        upstream_response.close()
        raise
    upstream_response.release()
    await response.write_eof()
    return response
