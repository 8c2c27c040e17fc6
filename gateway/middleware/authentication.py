"""Stage 4: routes without `auth: none` need a valid, unrevoked bearer token of an active user.

401 (RFC 6750) when there is no token, or the token fails: bad signature,
expired, wrong issuer, algorithm not the configured one, unknown key id,
revoked, or its user deactivated. The caller's current role is taken from
the user's state, not the token, so a role change applies at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.context import CTX, SERVICES, Principal, RequestContext
from gateway.middleware import Handler, Middleware
from gateway.middleware.rate_limit import bucket
from gateway.problems import GatewayError
from gateway.runtime import Runtime
from gateway.security.tokens import TokenError


@dataclass(frozen=True, slots=True)
class AuthenticationConfig:
    realm: str = "gateway"


unauthorized = GatewayError.unauthorized


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(
    request: web.Request, runtime: Runtime, token: str, ctx: RequestContext | None = None
) -> Principal:
    """The caller `token` names, as the user's current state says; or the 401 saying why not.

    With `ctx` on a rate-limited route and Redis, the rate-limit decision is
    made in the same Redis call and left in `ctx.rate_decision`."""
    try:
        claims = runtime.verifier.verify(token)
    except TokenError as exc:
        raise unauthorized(exc.code, exc.detail, True) from None
    services = request.app[SERVICES]
    answer = None
    route = ctx.route if ctx is not None else None
    if services.gate is not None and route is not None and route.rate_limit is not None:
        assert ctx is not None
        limit = route.rate_limit
        answer = await services.gate.check(
            claims.jti,
            claims.sub,
            bucket(limit, ctx, request, claims.sub),
            runtime.allowed_text.get(route.index, ""),
            limit.rate.limit,
            limit.rate.period,
        )
    if answer is not None and ctx is not None:
        revoked, state = answer.revoked, answer.state
        ctx.rate_decision = answer.decision
    else:
        revoked, state = await services.identity.check(claims.jti, claims.sub)
    if state is None or not state.active:
        raise unauthorized("user_inactive", "the account is deactivated", True)
    if revoked:
        raise unauthorized("token_revoked", "the token was revoked", True)
    return Principal(claims.sub, state.username, state.role, claims.jti, float(claims.exp))


def authentication(cfg: AuthenticationConfig) -> Middleware:
    @web.middleware
    async def authentication_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        ctx = request[CTX]
        route = ctx.route
        if route is None or route.auth == "none":
            return await handler(request)
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            raise unauthorized("missing_token", "this route needs a bearer token", False)
        runtime = ctx.runtime
        assert runtime is not None  # set by the route stage
        ctx.user = await authenticate(request, runtime, token, ctx)
        return await handler(request)

    return authentication_stage
