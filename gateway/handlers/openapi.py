"""GET /openapi.json: the local endpoints this gateway serves, from their declarations.

Built per config (the routes.yaml paths of the auth handlers follow the file,
the roles the policy), once for each Runtime that serves it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.context import CTX
from gateway.handlers.admin import ROUTES as ADMIN_ROUTES
from gateway.handlers.api import Operation, Reply, Status, declared, document, operation
from gateway.handlers.subroutes import SubRoutes
from gateway.handlers.users import ROUTES as USERS_ROUTES
from gateway.middleware import Handler
from gateway.problems import GatewayError
from gateway.runtime import BUILTIN_PATHS, BUILTIN_TEMPLATES, Runtime

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
    for path, name in {**BUILTIN_PATHS, **BUILTIN_TEMPLATES}.items():
        found.append((path, "GET", _required(declared(handlers[name]))))
    return found


def _required(op: Operation | None) -> Operation:
    if op is None:  # a handler added without @operation: caught by tests/handlers/test_openapi.py
        raise GatewayError.internal()
    return op


def openapi_document(runtime: Runtime, handlers: dict[str, Handler]) -> dict[str, Any]:
    roles = sorted(runtime.config.policy.roles)
    return document(
        operations(runtime, handlers), version=str(runtime.version), enums={"roles": roles}
    )


def openapi_endpoint(documented: Callable[[], dict[str, Handler]]) -> Handler:
    """The /openapi.json handler; `documented()` gives the handlers by name (the registry's
    tables, gateway/handlers/registry.py, passed in so this module does not import them)."""
    # The live config's document, made on first request: (the Runtime it describes, its JSON).
    cached: tuple[Runtime, bytes] | None = None

    @operation(
        "this document: OpenAPI 3.1 for the gateway's own endpoints",
        access="anyone",
        method="GET",
        replies={200: Reply("this OpenAPI 3.1 document", Status)},
    )
    async def openapi(request: web.Request) -> web.StreamResponse:
        nonlocal cached
        runtime = request[CTX].runtime
        assert runtime is not None
        if cached is None or cached[0] is not runtime:  # a reload made a new Runtime
            cached = (runtime, orjson.dumps(openapi_document(runtime, documented())))
        return web.Response(body=cached[1], content_type="application/json")

    return openapi
