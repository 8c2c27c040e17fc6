"""The innermost step of the chain: the route's local handler, or the proxy.

It also answers `Expect: 100-continue` (RFC 9110 §10.1.1): only here, once
authentication, policy and the rate limit have let the request through and
its declared length is within server.max_body, is the client told to send
its body. A request refused before that gets its final answer at once, and
its connection closes (the body it held back is never read).
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

from gateway.config.schema.server import ServerConfig
from gateway.context import CTX
from gateway.handlers.jsonio import accepts_json
from gateway.middleware import Handler
from gateway.pipeline.admission import Admission
from gateway.problems import GatewayError
from gateway.proxy.exchange import WebOutgoing
from gateway.proxy.forward import forward
from gateway.proxy.models import forward_model
from gateway.proxy.websocket import proxy_websocket
from gateway.runtime import RuntimeHolder
from gateway.server.lean import CONTINUE, continue_wanted
from gateway.server.protocol import close_after_response
from gateway.state.stores import Stores
from gateway.static.serve import serve_static

# Local handlers that answer another media type than JSON, so Accept's JSON
# check (406) does not apply: Prometheus asks for its text format, a browser for HTML.
NOT_JSON = frozenset({"builtin.metrics", "builtin.ui", "builtin.problems"})
# (handler, path, format=) of local exports a client asks for by query: their
# Accept (e.g. text/csv) is not held against them. Errors stay problem+json.
EXPORTS = frozenset({("admin", "/admin/usage", "csv")})


def is_export(request: web.Request, handler: str | None, path: str) -> bool:
    """Whether the request asks a local endpoint for one of its non-JSON exports."""
    return (handler, path.rstrip("/"), request.query.get("format")) in EXPORTS


async def defer_expect(request: web.Request) -> None:
    """The catch-all route's Expect handler (aiohttp calls it before any stage): no
    100 yet. Until one is sent the client may hold its body back, so a request
    refused meanwhile closes its connection after the answer."""
    if request.version == HttpVersion11:
        close_after_response(request)


async def answer_expect(request: web.Request, expect: str, server: ServerConfig) -> None:
    """Send `100 Continue` for a request the chain let through, or refuse it (417, 413)."""
    if not continue_wanted(request.version, expect, request, server):
        return
    await request.writer.write(CONTINUE)
    request.writer.output_size = 0  # as aiohttp does: the final response has not begun
    close_after_response(request, close=False)  # the body is coming: keep-alive again


def dispatcher(handlers: Mapping[str, Handler], stores: Stores, holder: RuntimeHolder) -> Handler:
    """The innermost handler; `stores` gives the model path its token quotas, and open
    WebSockets their callers' judges; `holder` says when the gateway drains."""

    admission = Admission(stores)

    def websockets_open(change: int) -> None:
        metrics = stores.metrics  # bound at start-up, after the chain was built
        if metrics is not None:
            metrics.websockets_open.inc(change)

    async def dispatch(request: web.Request) -> web.StreamResponse:
        ctx = request[CTX]
        route = ctx.route
        runtime = ctx.runtime
        assert route is not None  # set by the route stage
        assert runtime is not None
        if route.static is not None:
            # A file of the route's folder: any Accept (no JSON check), GET and HEAD only
            # (the route table answered 405 to the rest), no body to wait for.
            return await serve_static(request, route, ctx.path)
        handler: Handler | None = None
        if route.model is None and route.upstream is None:
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
        expect = request.headers.get(hdrs.EXPECT)
        if expect is not None:
            await answer_expect(request, expect, runtime.config.server)
        if ctx.upgrade and route.upstream is not None:
            # A WebSocket (websocket: true): the tunnel lives until either side closes it.
            return await proxy_websocket(
                request,
                ctx,
                route,
                runtime.pools[route.upstream],
                runtime.config.server,
                admission.recheck,
                websockets_open,
                lambda: holder.draining,
            )
        if route.model is not None or route.upstream is not None:
            # Served here when the app runs on aiohttp's own server; the gateway's
            # listener serves upstream routes on its lean path (gateway/server/lean.py).
            out = WebOutgoing(request)
            server = runtime.config.server
            if route.model is not None:
                await forward_model(request, out, ctx, route, runtime, server, stores.quotas)
            elif route.upstream is not None:
                await forward(request, ctx, route, runtime.pools[route.upstream], server, out)
            assert out.response is not None  # the proxy answers, or raises a problem
            return out.response
        assert handler is not None
        return await handler(request)

    return dispatch
