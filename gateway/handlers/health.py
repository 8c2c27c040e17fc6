"""/healthz (the process answers) and /readyz (it should be sent traffic)."""

from __future__ import annotations

from aiohttp import web

from gateway.context import CTX, HOLDER
from gateway.handlers.jsonio import json_response
from gateway.problems import GatewayError


async def healthz(request: web.Request) -> web.StreamResponse:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    holder = request.app[HOLDER]
    runtime = request[CTX].runtime or holder.current
    if holder.draining:
        # Shutting down: tell load balancers to stop sending before we stop listening.
        raise GatewayError.unavailable("the gateway is draining", code="draining")
    return json_response(
        {
            "status": "ready",
            "config": {"version": runtime.version, "file_hash": runtime.config.file_hash},
        }
    )
