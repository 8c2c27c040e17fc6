"""The streaming forward: client request → upstream → client, bodies never buffered.

Failures are mapped on purpose, one comment per case (contract section 5):
before the response headers are sent they become problems (502, 504, 413);
after, the only honest signal left is to cut the client connection, so a
truncated body is never presented as complete.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from yarl import URL

from gateway.config.schema import Route, ServerConfig
from gateway.context import RequestContext
from gateway.forwarded import forwarded_for, is_trusted
from gateway.problems import GatewayError
from gateway.proxy.headers import downstream_response_headers, upstream_request_headers
from gateway.proxy.pool import UpstreamPool

log = logging.getLogger("gateway.proxy")

READ_CHUNK = 64 * 1024


class BodyTooLarge(Exception):
    """A chunked request body grew past server.max_body while streaming."""


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

    target, base = pool.pick()
    url = URL(
        base + upstream_path(ctx, route) + ("?" + ctx.query if ctx.query else ""),
        encoded=True,  # the normalised path is already percent-encoded: send it as is
    )

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
    if request.body_exists:
        # A declared length is enforced by the HTTP parser; only a chunked body
        # has to be counted as it streams.
        body = (
            request.content
            if length is not None
            else _limited(request.content, server.max_body, ctx)
        )

    try:
        if upstream.first_byte_timeout:
            async with asyncio.timeout(upstream.first_byte_timeout):
                response = await _send(pool, request.method, url, headers, body)
        else:
            response = await _send(pool, request.method, url, headers, body)
    except (aiohttp.ClientError, TimeoutError, BodyTooLarge) as exc:
        raise _send_failure(exc, ctx, upstream.name, server.max_body) from None

    return await _relay(request, ctx, response, upstream.name, str(target.url))


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
) -> web.StreamResponse:
    response = web.StreamResponse(
        status=upstream_response.status,
        reason=upstream_response.reason,
        headers=downstream_response_headers(
            upstream_response.headers.items(), upstream_response.headers.get("Connection")
        ),
    )
    declared = upstream_response.content_length
    if declared is not None:
        response.content_length = declared
    try:
        await response.prepare(request)
        async for chunk in upstream_response.content.iter_chunked(READ_CHUNK):
            await response.write(chunk)
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
