"""The route decision: normalise the path and find its route (400 bad_path, 404, 405).

Built-in endpoints (/healthz, /metrics, ...) come first, whatever routes.yaml
says; then the compiled route table's first match (gateway/routing.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.pipeline.verdict import Deny
from gateway.problems import GatewayError
from gateway.routing import NO_PARAMS, RouteMatch, request_path

if TYPE_CHECKING:
    from gateway.runtime import Runtime


def normalise(raw_path: str) -> str | Deny:
    """The normalised path of a request target's path part (no query), or 400 bad_path."""
    try:
        return request_path(raw_path)
    except ValueError as exc:
        return Deny("bad_path", 400, str(exc))


def find_route(runtime: Runtime, method: str, path: str) -> RouteMatch | Deny:
    """The route for `method` and the normalised `path` on this config, or 404/405."""
    builtin = runtime.builtins.get(path)
    if builtin is not None:
        methods = builtin.methods or frozenset()
        if method not in methods:
            return Deny.of(GatewayError.method_not_allowed(method, sorted(methods)))
        return RouteMatch(builtin, NO_PARAMS)
    try:
        return runtime.table.match(method, path)
    except GatewayError as error:  # 404 no_route or 405 method_not_allowed
        return Deny.of(error)
