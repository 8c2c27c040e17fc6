"""The route decision: normalise the path and find its route (400 bad_path, 404, 405),
and whether it takes a WebSocket upgrade (400 upgrade_not_allowed).

Built-in endpoints (/healthz, /metrics, ..., and every path under /problems/)
come first, whatever routes.yaml says; then the compiled route table's first
match (gateway/routing.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.pipeline.verdict import Deny
from gateway.problems import GatewayError
from gateway.routing import NO_PARAMS, RouteMatch, request_path

if TYPE_CHECKING:
    from gateway.config.schema.routes import Route
    from gateway.runtime import Runtime

UPGRADE_NOT_ALLOWED = Deny.of(
    GatewayError.bad_request(
        "this route does not take WebSocket upgrades (no websocket: true)",
        code="upgrade_not_allowed",
    )
)
BAD_HANDSHAKE = Deny.of(
    GatewayError.bad_request(
        "a WebSocket upgrade is a GET (RFC 6455 section 4.1)",
        code="upgrade_not_allowed",
    )
)


def normalise(raw_path: str) -> str | Deny:
    """The normalised path of a request target's path part (no query), or 400 bad_path."""
    try:
        return request_path(raw_path)
    except ValueError as exc:
        return Deny("bad_path", 400, str(exc))


def find_route(runtime: Runtime, method: str, path: str) -> RouteMatch | Deny:
    """The route for `method` and the normalised `path` on this config, or 404/405."""
    builtin = runtime.builtins.get(path)
    if builtin is None:
        for prefix, route in runtime.builtin_prefixes:  # /problems/CODE
            if path.startswith(prefix):
                builtin = route
                break
    if builtin is not None:
        methods = builtin.methods or frozenset()
        if method not in methods:
            return Deny.of(GatewayError.method_not_allowed(method, sorted(methods)))
        return RouteMatch(builtin, NO_PARAMS)
    try:
        return runtime.table.match(method, path)
    except GatewayError as error:  # 404 no_route or 405 method_not_allowed
        return Deny.of(error)


def asks_websocket(headers: Mapping[str, str]) -> bool:
    """Whether the request asks to switch to WebSocket: its Upgrade names websocket and its
    Connection names upgrade (RFC 9110 §7.8: an Upgrade not listed there is ignored, and
    dropped as any hop-by-hop header)."""
    upgrade = headers.get("Upgrade")
    if upgrade is None or "websocket" not in upgrade.lower():
        return False
    connection = headers.get("Connection", "")
    return "upgrade" in (token.strip().lower() for token in connection.split(","))


def upgrade_decision(route: Route, method: str, headers: Mapping[str, str]) -> bool | Deny:
    """Whether the request is a WebSocket upgrade its route takes (True), a plain request
    (False), or a 400: an upgrade on a route without `websocket: true`, or not a GET
    (RFC 6455 §4.1)."""
    if not asks_websocket(headers):
        return False
    if not route.websocket:
        return UPGRADE_NOT_ALLOWED
    if method != "GET":
        return BAD_HANDSHAKE
    return True
