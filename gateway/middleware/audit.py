"""Stage 3, right inside errors: every request, allowed or denied, becomes one audit row.

It sees every outcome of the stages inside it (404/405, 401, 403, 429, the
handler, the proxy), records it and re-raises; the errors stage renders the
problem. The row and the journal record are gateway/audit/record.py's, the
same functions the lean server path (gateway/server/lean.py) records with.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from gateway.audit.record import Arrival, prepared, record, record_error
from gateway.context import CTX, Outcome, RequestContext
from gateway.middleware import Handler, Middleware
from gateway.middleware.errors import from_http_exception
from gateway.problems import GatewayError
from gateway.state.stores import Stores


@dataclass(frozen=True, slots=True)
class AuditStageConfig:
    stores: Stores  # its audit writer (rows, journal) and metrics, bound at start-up


def _bytes_out(request: web.Request, response: web.StreamResponse) -> int:
    if isinstance(response, web.FileResponse) and response.prepared:
        # A static file (gateway/static/serve.py): sendfile(2) bypasses the writer's
        # count, so the body is what its Content-Length announced, when one was sent.
        sent = response.status in (200, 206) and request.method != "HEAD"
        return (response.content_length or 0) if sent else 0
    if response.prepared:
        # Streamed (proxied): aiohttp's count of what was written, head
        # included; a response cut short counts what left before the cut.
        return response.body_length or request.writer.output_size
    if isinstance(response, web.Response):
        body = response.body
        if isinstance(body, bytes | bytearray):
            return len(body)
        return response.content_length or 0
    return 0


def arrival(request: web.BaseRequest) -> Arrival:
    return Arrival(request.content_length, request.remote or "", request.raw_path)


def audit(cfg: AuditStageConfig) -> Middleware:
    stores = cfg.stores

    @web.middleware
    async def audit_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        ctx = request[CTX]
        try:
            response = await handler(request)
        except GatewayError as exc:
            record_error(stores, arrival(request), ctx, exc)
            raise
        except web.HTTPException as exc:
            if exc.status >= 400:
                record_error(stores, arrival(request), ctx, from_http_exception(exc))
            else:  # a redirect raised by a handler is an answer
                record(stores, arrival(request), ctx, exc.status, 0, None, True)
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            # 499: nginx's "client closed request"
            record(stores, arrival(request), ctx, 499, 0, Outcome.CLIENT_GONE.value, True)
            raise
        except Exception:
            record_error(stores, arrival(request), ctx, GatewayError.internal())
            raise
        # ctx.outcome: why a proxied response ended early (client_gone, upstream_reset)
        reason = ctx.outcome.value or None
        bytes_out = _bytes_out(request, response)
        record(stores, arrival(request), ctx, response.status, bytes_out, reason, True)
        return response

    return audit_stage


def journal_prepared(
    stores: Stores, request: web.BaseRequest, ctx: RequestContext, response: web.StreamResponse
) -> None:
    """Called as the response head is prepared (the request-id stage's on_response_prepare
    hook): the request's audit record reaches the journal before any byte of it leaves."""
    if not isinstance(request, web.Request):
        return
    body = response.body if type(response) is web.Response else None
    whole = len(body) if type(body) is bytes else None
    prepared(stores, arrival(request), ctx, response.status, whole)
