"""Stage 5: the caller's role must pass the route's `roles` (403; gateway/pipeline/policy.py)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.context import CTX
from gateway.middleware import Handler, Middleware
from gateway.pipeline.admission import Admission


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    pass  # the roles are the route's, from the config the request runs on


def policy(cfg: PolicyConfig) -> Middleware:
    authorize = Admission.authorize

    @web.middleware
    async def policy_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        authorize(request[CTX])
        return await handler(request)

    return policy_stage
