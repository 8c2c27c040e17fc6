"""Stage 5: the caller's role must pass the route's `roles` (403; gateway/pipeline/policy.py)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.context import CTX
from gateway.middleware import Handler, Middleware
from gateway.pipeline.policy import decide
from gateway.pipeline.verdict import Deny


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    pass  # the roles are the route's, from the config the request runs on


def policy(cfg: PolicyConfig) -> Middleware:
    @web.middleware
    async def policy_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        ctx = request[CTX]
        route, user, runtime = ctx.route, ctx.user, ctx.runtime
        if route is None or user is None or runtime is None:
            return await handler(request)  # auth: none routes have no caller to judge
        verdict = decide(user.role, runtime.allowed.get(route.index), route.path, route.roles)
        if isinstance(verdict, Deny):
            raise verdict.error()
        return await handler(request)

    return policy_stage
