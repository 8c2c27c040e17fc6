"""Stage 6: per-route (and per-model) rate limits, GCRA, with RateLimit-* headers.

The bucket key is the route plus the route's `key`: the caller's user id
(the default; the client IP when nobody is signed in), the client IP (from
X-Forwarded-For only behind a trusted proxy), the route as a whole, or a
named header (the client IP when the header is absent). Every response of a
limited route carries RateLimit-Limit/Remaining/Reset; a 429 adds Retry-After.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.config.schema import RateLimitConfig
from gateway.context import CTX, SERVICES, RequestContext
from gateway.middleware import Handler, Middleware
from gateway.problems import GatewayError


@dataclass(frozen=True, slots=True)
class RateLimitStageConfig:
    pass


def bucket(
    limit: RateLimitConfig, ctx: RequestContext, request: web.Request, user_id: str | None = None
) -> str:
    """The limiter key: route pattern | what is counted."""
    assert ctx.route is not None
    return f"{ctx.route.path}|{counted(limit.key, ctx, request, user_id)}"


def counted(
    kind: str, ctx: RequestContext, request: web.Request, user_id: str | None = None
) -> str:
    """Who a limit keyed by `kind` counts: user (else IP), ip, route or header:NAME.

    `user_id`: the caller's, before the authentication stage has set ctx.user."""
    if user_id is None and ctx.user is not None:
        user_id = ctx.user.id
    header = request.headers.get(kind[7:]) if kind.startswith("header:") else None
    return counted_as(kind, user_id, ctx.client_ip, header)


def counted_as(kind: str, user_id: str | None, client_ip: str, header: str | None) -> str:
    """The counted part of a bucket key from plain values (also for `gateway explain`)."""
    if kind == "user":
        return f"user:{user_id}" if user_id is not None else f"ip:{client_ip}"
    if kind == "ip":
        return f"ip:{client_ip}"
    if kind == "route":
        return "route"
    # header:NAME; without the header, the client IP
    return f"{kind}={header[:128]}" if header else f"ip:{client_ip}"


def rate_limit(cfg: RateLimitStageConfig) -> Middleware:
    @web.middleware
    async def rate_limit_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        ctx = request[CTX]
        route = ctx.route
        if route is None or route.rate_limit is None:
            return await handler(request)
        limit = route.rate_limit
        rate = limit.rate
        services = request.app[SERVICES]
        decision = ctx.rate_decision  # made by the Redis gate with the identity check
        if decision is None:
            decision = await services.limiter.hit(
                bucket(limit, ctx, request), rate.limit, rate.period
            )
        ctx.rate_headers = decision.headers()
        if not decision.allowed:
            services.metrics.rate_limited(route.path)
            raise GatewayError(
                429,
                "rate_limited",
                f"rate limit {rate} by {limit.key} on {route.path} exceeded; "
                f"retry in {decision.retry_after}s",
            )
        return await handler(request)

    return rate_limit_stage
