"""Stage 6: per-route rate limits, GCRA, with RateLimit-* headers (gateway/pipeline/rate_limit.py).

The bucket is counted in the `Limiter` the stage's `Admission` was built
with, unless the Redis gate already counted it in the authentication stage's
lookup (one round trip); either way the decision is `rate_limit.decide`.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.context import CTX
from gateway.middleware import Handler, Middleware
from gateway.pipeline.admission import Admission


@dataclass(frozen=True, slots=True)
class RateLimitStageConfig:
    admission: Admission  # the limiter, and the metrics that count refusals


def rate_limit(cfg: RateLimitStageConfig) -> Middleware:
    limit = cfg.admission.limit

    @web.middleware
    async def rate_limit_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        await limit(request[CTX])
        return await handler(request)

    return rate_limit_stage
