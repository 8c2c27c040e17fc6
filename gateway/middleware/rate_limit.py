"""Stage 6: per-route rate limits, GCRA, with RateLimit-* headers (gateway/pipeline/rate_limit.py).

The bucket is counted in the `Limiter` the stage was built with, unless the
Redis gate already counted it in the authentication stage's lookup (one
round trip); either way the decision is `rate_limit.decide`.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.context import CTX
from gateway.middleware import Handler, Middleware
from gateway.pipeline.rate_limit import bucket, decide
from gateway.pipeline.verdict import Deny
from gateway.state.stores import Stores


@dataclass(frozen=True, slots=True)
class RateLimitStageConfig:
    stores: Stores  # the limiter, and the metrics that count refusals


def rate_limit(cfg: RateLimitStageConfig) -> Middleware:
    stores = cfg.stores

    @web.middleware
    async def rate_limit_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        ctx = request[CTX]
        route = ctx.route
        if route is None or route.rate_limit is None:
            return await handler(request)
        limit = route.rate_limit
        counted = ctx.rate_counted
        if counted is None:
            rate = limit.rate
            counted = await stores.limiter.hit(
                bucket(ctx, route, limit.key), rate.limit, rate.period
            )
        verdict = decide(route, limit, counted)
        ctx.rate_headers = verdict.headers
        if isinstance(verdict, Deny):
            if stores.metrics is not None:
                stores.metrics.rate_limited(route.path)
            raise verdict.error()
        return await handler(request)

    return rate_limit_stage
