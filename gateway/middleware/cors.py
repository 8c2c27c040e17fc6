"""Stage 3b: CORS for browser frontends on other origins (server.cors; Fetch standard).

A preflight (OPTIONS with Access-Control-Request-Method) is answered here,
before routing and authentication, since browsers send it without
credentials: 204 with the allowed methods and headers and how long to cache
that, or a 403 problem naming what was not allowed. Any other request from
an allowed origin gets Access-Control-Allow-Origin (and -Credentials,
-Expose-Headers) on whatever response goes out, errors included, so the
frontend can read a 401 or a 429. Without server.cors nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.config.schema.server import CorsConfig
from gateway.context import CTX
from gateway.middleware import Handler, Middleware
from gateway.problems import GatewayError
from gateway.runtime import RuntimeHolder


@dataclass(frozen=True, slots=True)
class CorsStageConfig:
    holder: RuntimeHolder  # server.cors is read from the live config


def allowed_origin(cors: CorsConfig, origin: str) -> str | None:
    """The Access-Control-Allow-Origin value for `origin`; None: not allowed."""
    if origin.lower() in cors.origins:
        return origin
    if "*" in cors.origins:
        return "*"  # never with credentials: the loader refuses that pairing
    return None


def response_headers(cors: CorsConfig, value: str) -> tuple[tuple[str, str], ...]:
    headers = [("Access-Control-Allow-Origin", value)]
    if value != "*":
        headers.append(("Vary", "Origin"))
    if cors.credentials:
        headers.append(("Access-Control-Allow-Credentials", "true"))
    if cors.expose:
        headers.append(("Access-Control-Expose-Headers", ", ".join(cors.expose)))
    return tuple(headers)


def cors_headers(cors: CorsConfig, origin: str) -> tuple[tuple[str, str], ...]:
    """The Access-Control-* headers an answer to `origin` carries (none: not allowed)."""
    value = allowed_origin(cors, origin)
    return response_headers(cors, value) if value is not None else ()


def preflight(cors: CorsConfig, request: web.Request, value: str | None) -> web.Response:
    origin = request.headers.get("Origin", "")
    if value is None:
        raise GatewayError(403, "cors_origin_forbidden", f"origin {origin!r} is not allowed")
    method = request.headers.get("Access-Control-Request-Method", "").upper()
    if method not in cors.methods:
        raise GatewayError(
            403,
            "cors_method_forbidden",
            f"method {method!r} is not allowed from other origins ({', '.join(cors.methods)})",
        )
    asked = request.headers.get("Access-Control-Request-Headers", "")
    names = [name.strip() for name in asked.split(",") if name.strip()]
    allowed = {name.lower() for name in cors.headers}
    refused = [name for name in names if name.lower() not in allowed]
    if refused:
        raise GatewayError(
            403,
            "cors_header_forbidden",
            f"header {refused[0]!r} is not allowed from other origins ({', '.join(cors.headers)})",
        )
    headers = {
        "Access-Control-Allow-Origin": value,
        "Access-Control-Allow-Methods": ", ".join(cors.methods),
        "Access-Control-Max-Age": str(int(cors.max_age)),
        "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    }
    if names:
        headers["Access-Control-Allow-Headers"] = ", ".join(names)
    if cors.credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    return web.Response(status=204, headers=headers)


def cors(cfg: CorsStageConfig) -> Middleware:
    holder = cfg.holder

    @web.middleware
    async def cors_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser's cross-origin call: nothing to look up
            return await handler(request)
        config = holder.current.config.server.cors
        if config is None:
            return await handler(request)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return preflight(config, request, allowed_origin(config, origin))
        # stamped on whatever response goes out (request_id.stamp_headers)
        request[CTX].cors_headers = cors_headers(config, origin)
        return await handler(request)

    return cors_stage
