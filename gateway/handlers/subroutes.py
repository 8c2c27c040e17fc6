"""Routing inside one local handler (`users`, `admin`), with the gateway's own router.

The route table of routes.yaml sends everything under a prefix to one
handler name; this table picks the function, with the same normalised
path, 404 and 405 rules.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from gateway.config.schema.routes import Route
from gateway.context import CTX
from gateway.middleware import Handler
from gateway.routing import RouteTable, compile_pattern


class SubRoutes:
    def __init__(self, entries: Sequence[tuple[str, Sequence[str], Handler]]) -> None:
        routes = []
        self._handlers: dict[int, Handler] = {}
        for index, (path, methods, handler) in enumerate(entries):
            allowed = set(methods) | ({"HEAD"} if "GET" in methods else set())
            routes.append(
                Route(
                    index=index,
                    path=compile_pattern(path),
                    methods=frozenset(allowed),
                    handler=path,
                )
            )
            self._handlers[index] = handler
        self._table = RouteTable(routes)
        self.entries = tuple(entries)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        ctx = request[CTX]
        found = self._table.match(request.method, ctx.path.rstrip("/") or "/")
        ctx.params = found.params
        return await self._handlers[found.route.index](request)
