"""Stage 2, outermost after the id: every failure becomes an RFC 9457 problem.

A `GatewayError` renders as itself; an aiohttp HTTP exception keeps its
status; anything else is a 500 whose body says nothing of the cause, while
the log line carries the traceback and the request id.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web

from gateway.context import CTX, RequestContext
from gateway.middleware import Handler, Middleware
from gateway.problems import PROBLEM_CONTENT_TYPE, GatewayError, render

log = logging.getLogger("gateway.errors")


@dataclass(frozen=True, slots=True)
class ErrorsConfig:
    pass


def problem_response(error: GatewayError, request_id: str) -> web.Response:
    response = web.Response(
        body=render(error, request_id),
        status=error.status,
        content_type=PROBLEM_CONTENT_TYPE,
    )
    response.headers.update(error.headers)
    return response


def from_http_exception(exc: web.HTTPException) -> GatewayError:
    if exc.status == 413:
        limit = getattr(exc, "max_size", 0) or 0
        return GatewayError.too_large(limit)
    code = exc.reason.lower().replace(" ", "_") or "http_error"
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
    return GatewayError(exc.status, code, exc.reason, headers)


# Refusals by the chain (not failures): each is logged once, with its reason code.
DENIALS = frozenset({401, 403, 404, 405, 429})


def log_unhandled(ctx: RequestContext | None, method: str) -> None:
    """The log line of a failure that became a 500: its traceback, never in the body."""
    log.exception(
        "unhandled error",
        extra={
            "request_id": ctx.request_id if ctx else None,
            "method": method,
            "path": ctx.path if ctx else None,
        },
    )


def log_denial(error: GatewayError, ctx: RequestContext | None, method: str) -> None:
    """One line per refusal (a status in DENIALS), at INFO."""
    if not log.isEnabledFor(logging.INFO):
        return
    # The reason code of a denial is the problem's `code`, the audit row's
    # `reason` and this line's `code`: one name to grep for everywhere.
    route = ctx.route if ctx else None
    user = ctx.user if ctx else None
    log.info(
        "denied",
        extra={
            "request_id": ctx.request_id if ctx else None,
            "status": error.status,
            "code": error.code,
            "method": method,
            "path": ctx.path if ctx else None,
            "route": route.path if route else None,
            "user": user.username if user else None,
        },
    )


def errors(cfg: ErrorsConfig) -> Middleware:
    @web.middleware
    async def errors_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as exc:
            error = exc
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # redirects and the like are answers, not errors
            error = from_http_exception(exc)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log_unhandled(request.get(CTX), request.method)
            error = GatewayError.internal()
        if error.status in DENIALS:
            log_denial(error, request.get(CTX), request.method)
        if request.writer.output_size > 0 and request.transport is not None:
            # A response head is already on the wire: a problem body would be
            # spliced into it. Cutting the connection is the only honest answer.
            request.transport.abort()
        return problem_response(error, request[CTX].request_id)

    return errors_stage
