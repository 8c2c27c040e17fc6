"""GET /metrics: this process's Prometheus metrics, for loopback clients and admins.

Built in, so it is served whatever routes.yaml says. A client on loopback
(the client IP after `server.trusted_proxies`, so a proxy on the same host
does not make everyone local) is answered; anyone else needs an admin's
bearer token, checked as the authentication stage checks one.
"""

from __future__ import annotations

from aiohttp import web

from gateway.context import CTX, SERVICES
from gateway.forwarded import is_loopback
from gateway.handlers.api import Reply, Status, operation
from gateway.metrics import CONTENT_TYPE
from gateway.middleware.authentication import authenticate, bearer_token
from gateway.problems import GatewayError
from gateway.store.users import ADMIN_ROLE


@operation(
    "Prometheus metrics (from loopback without a token; otherwise an admin token)",
    access="anyone",
    method="GET",
    replies={200: Reply("the Prometheus text format", Status, media="text/plain")},
)
async def metrics(request: web.Request) -> web.StreamResponse:
    ctx = request[CTX]
    runtime = ctx.runtime
    assert runtime is not None  # set by the route stage
    if not is_loopback(ctx.client_ip):
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            raise GatewayError.unauthorized(
                "missing_token", "/metrics needs an admin's bearer token off loopback", False
            )
        user = ctx.user = await authenticate(request, runtime, token)  # the audit row names them
        admins = runtime.config.policy.allowed_roles((ADMIN_ROLE,)) | {ADMIN_ROLE}
        if user.role not in admins:
            raise GatewayError(403, "role_forbidden", f"role {user.role!r} may not read /metrics")
    return web.Response(
        body=request.app[SERVICES].metrics.render(),
        headers={"Content-Type": CONTENT_TYPE},
    )
