"""GET /openapi.json: the local endpoints this gateway serves, from their declarations.

Built per config (the routes.yaml paths of the auth handlers follow the file,
the roles the policy), once for each Runtime that serves it.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.context import CTX
from gateway.handlers.admin import ROUTES as ADMIN_ROUTES
from gateway.handlers.api import Operation, declared, document, operation
from gateway.handlers.subroutes import SubRoutes
from gateway.handlers.users import ROUTES as USERS_ROUTES
from gateway.middleware import Handler
from gateway.problems import GatewayError
from gateway.runtime import BUILTIN_PATHS, Runtime

MOUNTED: dict[str, SubRoutes] = {"users": USERS_ROUTES, "admin": ADMIN_ROUTES}


def operations(runtime: Runtime, handlers: dict[str, Handler]) -> list[tuple[str, str, Operation]]:
    """(path, method, declaration) of every local endpoint the config routes, and the built-ins."""
    found: list[tuple[str, str, Operation]] = []
    for route in runtime.config.routes:
        if route.handler is None:
            continue
        sub = MOUNTED.get(route.handler)
        if sub is not None:
            for path, methods, handler in sub.entries:
                op = _required(declared(handler))
                found.extend((path, method, op) for method in methods)
            continue
        op = _required(declared(handlers[route.handler]))
        methods = sorted(route.methods - {"HEAD"}) if route.methods else [op.method]
        found.extend((route.path, method, op) for method in methods)
    for path, name in BUILTIN_PATHS.items():
        found.append((path, "GET", _required(declared(handlers[name]))))
    return found


def _required(op: Operation | None) -> Operation:
    if op is None:  # a handler added without @operation: caught by tests/test_openapi.py
        raise GatewayError.internal()
    return op


# The live config's document, made on first request: (the Runtime it describes, its JSON).
_cached: tuple[Runtime, bytes] | None = None


def openapi_document(runtime: Runtime, handlers: dict[str, Handler]) -> dict[str, Any]:
    roles = sorted(runtime.config.policy.roles)
    return document(
        operations(runtime, handlers), version=str(runtime.version), enums={"roles": roles}
    )


@operation(
    "this document: OpenAPI 3.1 for the gateway's own endpoints",
    access="anyone",
    method="GET",
)
async def openapi(request: web.Request) -> web.StreamResponse:
    from gateway.handlers import BUILTIN, ROUTABLE

    global _cached
    runtime = request[CTX].runtime
    assert runtime is not None
    if _cached is None or _cached[0] is not runtime:  # a reload made a new Runtime
        _cached = (runtime, orjson.dumps(openapi_document(runtime, {**ROUTABLE, **BUILTIN})))
    return web.Response(body=_cached[1], content_type="application/json")
