"""Stage 3, right inside errors: every request, allowed or denied, becomes one audit row.

It sees every outcome of the stages inside it (404/405, 401, 403, 429, the
handler, the proxy), records it and re-raises; the errors stage renders the
problem. The row is made from the context, never from headers, the query
string or the body, so no secret reaches it. Per request this is a tuple, a
deque append and two metric updates: no await, no log call, no SQL.

`journal_prepared`, called by the app's on_response_prepare hook, puts the
request's record in the audit journal before a byte of its head
leaves (gateway/audit/journal.py): the final row when this stage made it
already (local answers, problems), a final one when the handler sends a whole
body with the head (the proxy's small bodies), else a provisional one (a
response its handler streams), whose final row this stage journals when the
handler returns. So a process killed at any moment leaves a record of every
answer a client has seen. Per response: one small encode and one write.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiohttp import web

from gateway.audit.journal import INTERRUPTED
from gateway.audit.rows import AuditRow, audit_row, report_row
from gateway.audit.writer import AuditWriter
from gateway.context import CTX, Outcome, RequestContext
from gateway.metrics import NO_ROUTE
from gateway.middleware import Handler, Middleware
from gateway.middleware.errors import from_http_exception
from gateway.problems import GatewayError, render
from gateway.state.stores import Stores


@dataclass(frozen=True, slots=True)
class AuditStageConfig:
    stores: Stores  # its audit writer (rows, journal) and metrics, bound at start-up


def _bytes_out(request: web.Request, response: web.StreamResponse) -> int:
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


def _row(
    request: web.BaseRequest,
    ctx: RequestContext,
    status: int,
    bytes_out: int,
    reason: str | None,
    journal_id: str,
) -> AuditRow:
    route, user = ctx.route, ctx.user
    length = request.content_length
    # By position, in audit_row's order (keywords cost 1 us more per call).
    return audit_row(
        time.time(),  # ts
        ctx.request_id,
        user.id if user is not None else None,
        user.username if user is not None else None,
        user.role if user is not None else None,
        request.method,
        # The normalised path; before the route stage set it (a path it could
        # not normalise), the raw path. Never the query string.
        ctx.path or request.raw_path.partition("?")[0],
        route.path if route is not None else None,
        # upstream; a model call: the model called last (a fallback's when the first failed)
        ctx.model or (route.upstream if route is not None else None),
        status,
        time.monotonic() - ctx.started,  # latency
        ctx.client_ip or request.remote or "",
        length if length is not None else ctx.bytes_in,  # bytes_in
        bytes_out,
        reason,
        journal_id,
    )


def _record(
    stores: Stores,
    request: web.Request,
    ctx: RequestContext,
    status: int,
    bytes_out: int,
    reason: str | None,
    model_call: bool,
) -> None:
    writer, metrics = stores.audit, stores.metrics
    assert writer is not None  # both bound at start-up, before the first request
    assert metrics is not None
    journal = writer.journal
    streamed = ctx.journal_id  # set: a provisional record went out with the head
    journal_id = streamed or journal.new_id()
    row = _row(request, ctx, status, bytes_out, reason, journal_id)
    writer.submit(row)
    route = ctx.route
    report = None
    if model_call and route is not None and route.model is not None:
        # Charged to the model that answered, with the number of models called.
        model = ctx.model or route.model
        report = report_row(row, model, ctx.ttfb, ctx.usage, attempts=max(ctx.attempts, 1))
        writer.submit(report)
    if streamed:
        if ctx.journal_whole and report is None and reason is None:
            journal.forget(journal_id)  # recorded final at its head, and it went out so
        else:
            journal.end(journal_id, row, report)
    else:  # journal_response writes it as the response head is prepared
        ctx.journal_id = journal_id
        ctx.journal_rows = (row, report)
    metrics.request(route.path if route is not None else NO_ROUTE, status, row.latency_ms / 1000)
    upstream = row.upstream
    if (
        upstream is not None
        and reason is not None
        and (reason.startswith("upstream_") or reason == "no_healthy_upstream")
    ):
        metrics.upstream_error(upstream, reason)  # upstream_unreachable, _timeout, _reset, …


def _record_error(
    stores: Stores, request: web.Request, ctx: RequestContext, error: GatewayError
) -> None:
    # The errors stage renders exactly this body; its length is the bytes out.
    # A 5xx on a model route is a failed model call; a 4xx is a refusal
    # (token, role, limit, body) that never reached the model.
    size = len(render(error, ctx.request_id))
    _record(stores, request, ctx, error.status, size, error.code, error.status >= 500)


def audit(cfg: AuditStageConfig) -> Middleware:
    stores = cfg.stores

    @web.middleware
    async def audit_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        ctx = request[CTX]
        try:
            response = await handler(request)
        except GatewayError as exc:
            _record_error(stores, request, ctx, exc)
            raise
        except web.HTTPException as exc:
            if exc.status >= 400:
                _record_error(stores, request, ctx, from_http_exception(exc))
            else:  # a redirect raised by a handler is an answer
                _record(stores, request, ctx, exc.status, 0, None, True)
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            # 499: nginx's "client closed request"
            _record(stores, request, ctx, 499, 0, Outcome.CLIENT_GONE.value, True)
            raise
        except Exception:
            _record_error(stores, request, ctx, GatewayError.internal())
            raise
        # ctx.outcome: why a proxied response ended early (client_gone, upstream_reset)
        reason = ctx.outcome.value or None
        _record(stores, request, ctx, response.status, _bytes_out(request, response), reason, True)
        return response

    return audit_stage


def journal_prepared(
    writer: AuditWriter, request: web.BaseRequest, ctx: RequestContext, response: web.StreamResponse
) -> None:
    """Called as the response head is prepared (the request-id stage's on_response_prepare
    hook): the request's audit record reaches the journal before any byte of it leaves."""
    if not isinstance(request, web.Request):
        return
    rows = ctx.journal_rows
    if rows is not None:  # made by the audit stage already: the final record
        ctx.journal_rows = None
        writer.journal.record(*rows)
    elif not ctx.journal_id:
        journal = writer.journal
        ctx.journal_id = journal_id = journal.new_id()
        body = response.body if type(response) is web.Response else None
        if type(body) is bytes:
            # The handler sends a whole body with this head (the proxy's small ones):
            # final now, as long as it goes out whole; the stage's row says otherwise.
            ctx.journal_whole = True
            row = _row(request, ctx, response.status, len(body), None, journal_id)
            journal.begin(journal_id, row, final=True)
        else:
            # The handler streams it (the proxy): provisional until the stage's row.
            row = _row(request, ctx, response.status, 0, INTERRUPTED, journal_id)
            journal.begin(journal_id, row)
