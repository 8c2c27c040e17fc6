"""Stage 3: normalise the path, pin the live config, and find the route (404/405).

Every later stage (authentication, policy, limits, the proxy) reads the route
and the normalised path from the context, so they all judge the same path.
The pinned Runtime counts this request until it ends, so a reload closes the
old config's upstream pools only once its last request is done.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.context import CTX, HOLDER
from gateway.forwarded import client_ip
from gateway.middleware import Handler, Middleware
from gateway.problems import GatewayError
from gateway.routing import request_path


@dataclass(frozen=True, slots=True)
class RouteStageConfig:
    pass


def route(cfg: RouteStageConfig) -> Middleware:
    @web.middleware
    async def route_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        ctx = request[CTX]
        holder = request.app[HOLDER]
        runtime = holder.current
        ctx.runtime = runtime  # this request keeps this config to the end
        raw_path, _, ctx.query = request.raw_path.partition("?")
        try:
            path = request_path(raw_path)
        except ValueError as exc:
            raise GatewayError.bad_request(str(exc), code="bad_path") from None
        ctx.path = path
        ctx.client_ip = client_ip(
            request.remote or "",
            request.headers.get("X-Forwarded-For"),
            runtime.config.server.trusted_proxies,
        )
        builtin = runtime.builtins.get(path)
        if builtin is not None:
            if request.method not in builtin.methods:  # type: ignore[operator]
                raise GatewayError.method_not_allowed(request.method, sorted(builtin.methods or ()))
            ctx.route = builtin
        else:
            found = runtime.table.match(request.method, path)
            ctx.route = found.route
            ctx.params = found.params
        # Counted from here (no await since it was pinned, so no reload came between)
        # until it ends: a retired config's pools close once its count is back to 0.
        occupancy = runtime.occupancy
        occupancy.in_flight += 1
        try:
            return await handler(request)
        finally:
            occupancy.in_flight -= 1
            if occupancy.retired and not occupancy.in_flight:
                holder.drained(runtime)

    return route_stage
