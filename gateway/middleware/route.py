"""Stage 3: normalise the path, pin the live config, and find the route (404/405).

The decision is gateway/pipeline/route.py. Every later stage (authentication,
policy, limits, the proxy) reads the route and the normalised path from the
context, so they all judge the same path. The pinned Runtime counts this
request until it ends, so a reload closes the old config's upstream pools
only once its last request is done.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.context import CTX
from gateway.middleware import Handler, Middleware
from gateway.pipeline.forwarded import client_ip
from gateway.pipeline.route import find_route, normalise, upgrade_decision
from gateway.pipeline.verdict import Deny
from gateway.runtime import RuntimeHolder


@dataclass(frozen=True, slots=True)
class RouteStageConfig:
    holder: RuntimeHolder  # the live config; each request pins the one it starts on


def route(cfg: RouteStageConfig) -> Middleware:
    holder = cfg.holder

    @web.middleware
    async def route_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        ctx = request[CTX]
        runtime = holder.current
        ctx.runtime = runtime  # this request keeps this config to the end
        raw_path, _, ctx.query = request.raw_path.partition("?")
        path = normalise(raw_path)
        if isinstance(path, Deny):
            raise path.error()
        ctx.path = path
        ctx.client_ip = client_ip(
            request.remote or "",
            request.headers.get("X-Forwarded-For"),
            runtime.config.server.trusted_proxies,
        )
        found = find_route(runtime, request.method, path)
        if isinstance(found, Deny):
            raise found.error()
        ctx.route = found.route
        ctx.params = found.params
        upgrade = upgrade_decision(found.route, request.method, request.headers)
        if isinstance(upgrade, Deny):
            raise upgrade.error()
        ctx.upgrade = upgrade
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
