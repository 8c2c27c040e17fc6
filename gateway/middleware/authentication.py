"""Stage 4: routes without `auth: none` need a valid, unrevoked bearer token of an active user.

The decision and its messages are gateway/pipeline/authentication.py; this
stage reads the header, asks the `Authenticator` it was built with, and puts
the caller in the context (or raises the 401).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.context import CTX
from gateway.middleware import Handler, Middleware
from gateway.pipeline.authentication import MISSING_TOKEN, Authenticator, bearer_token
from gateway.pipeline.verdict import Deny


@dataclass(frozen=True, slots=True)
class AuthenticationConfig:
    authenticator: Authenticator


def authentication(cfg: AuthenticationConfig) -> Middleware:
    authenticator = cfg.authenticator

    @web.middleware
    async def authentication_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        ctx = request[CTX]
        route = ctx.route
        if route is None or route.auth == "none":
            return await handler(request)
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            raise MISSING_TOKEN.error()
        runtime = ctx.runtime
        assert runtime is not None  # set by the route stage
        caller, ctx.rate_counted = await authenticator.authenticate(ctx, runtime, token, route)
        if isinstance(caller, Deny):
            raise caller.error()
        ctx.user = caller
        return await handler(request)

    return authentication_stage
