"""Stage 4: routes without `auth: none` need a valid, unrevoked bearer token of an active user.

The decision and its messages are gateway/pipeline/authentication.py; this
stage runs `Admission.authenticate` (gateway/pipeline/admission.py), which
puts the caller in the context or raises the 401.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.context import CTX
from gateway.middleware import Handler, Middleware
from gateway.pipeline.admission import Admission


@dataclass(frozen=True, slots=True)
class AuthenticationConfig:
    admission: Admission


def authentication(cfg: AuthenticationConfig) -> Middleware:
    authenticate = cfg.admission.authenticate

    @web.middleware
    async def authentication_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        await authenticate(request[CTX])
        return await handler(request)

    return authentication_stage
