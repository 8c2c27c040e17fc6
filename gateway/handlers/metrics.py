"""GET /metrics: the Prometheus metrics, for loopback clients and admins.

One process's registry; under `--workers N`, every worker's series, each
labelled `worker` (gateway/server/siblings.py).

Built in, so it is served whatever routes.yaml says. A client on loopback
(the client IP after `server.trusted_proxies`, so a proxy on the same host
does not make everyone local) is answered; anyone else needs an admin's
bearer token, checked as the authentication stage checks one.
"""

from __future__ import annotations

from aiohttp import web

from gateway.config.policies import ADMIN_ROLE
from gateway.context import CTX
from gateway.handlers.api import Reply, Text, operation
from gateway.metrics import CONTENT_TYPE
from gateway.pipeline.authentication import MISSING_TOKEN, Authenticator, bearer_token
from gateway.pipeline.forwarded import is_loopback
from gateway.pipeline.policy import admin_roles, decide
from gateway.pipeline.verdict import Deny
from gateway.server.siblings import gather, siblings_folder
from gateway.services import SERVICES, STORES

MEDIA = CONTENT_TYPE.removesuffix("; charset=utf-8")  # text/plain; version=0.0.4


@operation(
    "Prometheus metrics (from loopback without a token; otherwise an admin token)",
    access="anyone",
    method="GET",
    replies={200: Reply("the Prometheus text format, version 0.0.4", Text, media=MEDIA)},
    database=True,  # a caller off loopback is authenticated: that may read the user
)
async def metrics(request: web.Request) -> web.StreamResponse:
    ctx = request[CTX]
    runtime = ctx.runtime
    assert runtime is not None  # set by the route stage
    services = request.app[SERVICES]
    if not is_loopback(ctx.client_ip):
        # the same decisions as the chain's, with /metrics needing an admin's role
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            raise MISSING_TOKEN.error()
        caller, _ = await Authenticator(request.app[STORES]).authenticate(ctx, runtime, token)
        if isinstance(caller, Deny):
            raise caller.error()
        ctx.user = caller  # the audit row names them
        verdict = decide(caller.role, admin_roles(runtime.config.policy), ctx.path, (ADMIN_ROLE,))
        if isinstance(verdict, Deny):
            raise verdict.error()
    body = services.metrics.render()
    siblings = siblings_folder()
    if siblings is not None:  # --workers N: every worker's series, labelled by worker
        body = await gather(*siblings, body)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
