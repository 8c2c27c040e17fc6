"""Stage 4: routes without `auth: none` need a valid bearer token (default deny).

Token issuing and verification arrive with the identity layer; until a
verifier is configured, no presented token can be valid, so every route
that needs one answers 401 exactly as the contract words it (section 8).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.context import CTX
from gateway.middleware import Handler, Middleware
from gateway.problems import GatewayError

REALM = 'Bearer realm="gateway"'


@dataclass(frozen=True, slots=True)
class AuthenticationConfig:
    realm: str = "gateway"


def unauthorized(code: str, detail: str, token_presented: bool) -> GatewayError:
    challenge = REALM
    if token_presented:
        # RFC 6750 §3: error codes only when a token was presented.
        challenge += f', error="invalid_token", error_description="{detail}"'
    return GatewayError(401, code, detail, {"WWW-Authenticate": challenge})


def authentication(cfg: AuthenticationConfig) -> Middleware:
    @web.middleware
    async def authentication_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request[CTX].route
        if route is None or route.auth == "none":
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header or scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("missing_token", "this route needs a bearer token", False)
        raise unauthorized("no_verifier", "no token verifier is configured", True)

    return authentication_stage
