"""/healthz (the process answers), /readyz (it should get traffic), /.well-known/jwks.json."""

from __future__ import annotations

from aiohttp import web

from gateway.context import CTX
from gateway.handlers.api import Problem, Reply, Status, operation
from gateway.handlers.jsonio import json_response
from gateway.problems import GatewayError
from gateway.runtime import HOLDER
from gateway.services import SERVICES


@operation("liveness", access="anyone", method="GET", replies={200: Reply("{status: ok}", Status)})
async def healthz(request: web.Request) -> web.StreamResponse:
    return json_response({"status": "ok"})


@operation(
    "readiness: database reachable, config loaded, not draining; Redis ok, degraded or down",
    access="anyone",
    method="GET",
    replies={
        200: Reply(
            "ready, with the loaded config's version and `redis`: ok, degraded "
            "(unreachable, server.redis_failure open: this instance serves on its own "
            "state) or not configured",
            Status,
        ),
        503: Reply(
            "not ready, and why: draining, audit_failing, database_down (the database is "
            "unreachable), or redis_down (Redis unreachable in closed mode)",
            Problem,
        ),
    },
)
async def readyz(request: web.Request) -> web.StreamResponse:
    holder = request.app[HOLDER]
    runtime = request[CTX].runtime or holder.current
    if holder.draining:
        # Shutting down: tell load balancers to stop sending before we stop listening.
        raise GatewayError.unavailable("the gateway is draining", code="draining")
    services = request.app[SERVICES]
    if services.audit.failing:
        # Checked first: it means the database is down too, and rows may be lost.
        # (Anyone may ask /readyz: the log, not this answer, names the spool file.)
        raise GatewayError.unavailable(
            "the audit log is failing: the database does not take rows "
            "and the audit spool cannot be written",
            code="audit_failing",
        )
    if not await services.database_ok():
        raise GatewayError.unavailable("the database is unreachable", code="database_down")
    redis = "not configured"
    if services.repair is not None:
        if await services.repair.reachable():
            redis = "ok"
        elif runtime.config.server.redis_failure == "closed":
            # Closed mode refuses rate-limited requests while Redis is down:
            # send traffic elsewhere.
            raise GatewayError.unavailable(
                "redis is unreachable and server.redis_failure is closed", code="redis_down"
            )
        else:
            redis = "degraded"  # open mode: serving on this instance's own state
    return json_response(
        {
            "status": "ready",
            "config": {"version": runtime.version, "file_hash": runtime.config.file_hash},
            "redis": redis,
        }
    )


@operation(
    "the public keys tokens are signed with (an empty set for HS256)",
    access="anyone",
    method="GET",
    replies={200: Reply("a JSON Web Key Set", Status)},
)
async def jwks(request: web.Request) -> web.StreamResponse:
    runtime = request[CTX].runtime or request.app[HOLDER].current
    response = json_response(runtime.keys.jwks())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
