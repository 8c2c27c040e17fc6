"""Stage 5: the caller's role must pass the route's `roles` (default deny).

A role passes if it is listed or inherits a listed role; the set of roles
that pass each route is computed once per config (`Runtime.allowed`), so the
decision here is one set membership test.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.context import CTX
from gateway.middleware import Handler, Middleware
from gateway.problems import GatewayError


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    pass


def policy(cfg: PolicyConfig) -> Middleware:
    @web.middleware
    async def policy_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        ctx = request[CTX]
        route, user, runtime = ctx.route, ctx.user, ctx.runtime
        if route is None or user is None or runtime is None:
            return await handler(request)  # auth: none routes have no caller to judge
        allowed = runtime.allowed.get(route.index)
        if allowed is not None and user.role not in allowed:
            raise GatewayError(
                403,
                "role_forbidden",
                f"role {user.role!r} may not use {route.path} (needs {', '.join(route.roles)})",
            )
        return await handler(request)

    return policy_stage
