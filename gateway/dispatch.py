"""The innermost step of the chain: the route's local handler, or the proxy."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from gateway.context import CTX
from gateway.handlers.jsonio import accepts_json
from gateway.middleware import Handler
from gateway.problems import GatewayError
from gateway.proxy.forward import forward
from gateway.proxy.models import forward_model

# Local handlers that answer another media type than JSON, so Accept's JSON
# check (406) does not apply: Prometheus asks for its text format.
NOT_JSON = frozenset({"builtin.metrics", "builtin.ui"})
# (handler, path, format=) of local exports a client asks for by query: their
# Accept (e.g. text/csv) is not held against them. Errors stay problem+json.
EXPORTS = frozenset({("admin", "/admin/usage", "csv")})


def is_export(request: web.Request, handler: str | None, path: str) -> bool:
    """Whether the request asks a local endpoint for one of its non-JSON exports."""
    return (handler, path.rstrip("/"), request.query.get("format")) in EXPORTS


def dispatcher(handlers: Mapping[str, Handler]) -> Handler:
    async def dispatch(request: web.Request) -> web.StreamResponse:
        ctx = request[CTX]
        route = ctx.route
        runtime = ctx.runtime
        assert route is not None  # set by the route stage
        assert runtime is not None
        if route.model is not None:
            return await forward_model(request, ctx, route, runtime, runtime.config.server)
        if route.upstream is not None:
            pool = runtime.pools[route.upstream]
            return await forward(request, ctx, route, pool, runtime.config.server)
        handler = handlers.get(route.handler or "")
        if handler is None:
            # load_config only admits registered handler names; reaching here
            # means the registry and KNOWN_HANDLERS drifted apart.
            raise GatewayError.internal()
        if (
            route.handler not in NOT_JSON
            and not is_export(request, route.handler, ctx.path)
            and not accepts_json(request.headers.get("Accept"))
        ):
            raise GatewayError.not_acceptable()
        return await handler(request)

    return dispatch
