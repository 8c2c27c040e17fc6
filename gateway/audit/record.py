"""One audit row per request, from the request's context: shared by both ways through.

The aiohttp stage (gateway/middleware/audit.py) and the lean server path
(gateway/server/lean.py) record a request with these functions, so a row is
built the same way whichever served it. The row is made from the context,
never from headers, the query string or the body, so no secret reaches it.
Per request this is a tuple, a deque append and two metric updates: no
await, no log call, no SQL.

`prepared` puts the request's record in the audit journal before a byte of
its head leaves (gateway/audit/journal.py): the final row when `record` made
it already (local answers, problems), a final one when the whole body goes
out with the head (the proxy's small bodies), else a provisional one (a
streamed response), whose final row `record` journals when it is over. So a
process killed at any moment leaves a record of every answer a client has
seen. Per response: one small encode and one write.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from gateway import tracing
from gateway.audit.access import access_line
from gateway.audit.journal import INTERRUPTED
from gateway.audit.rows import AuditRow, audit_row, report_row
from gateway.context import RequestContext
from gateway.metrics import NO_ROUTE
from gateway.problems import GatewayError, render
from gateway.state.stores import Stores


class Arrival(NamedTuple):
    """What a row needs of the request beyond its context."""

    length: int | None  # its declared Content-Length
    remote: str  # the peer's address
    raw_path: str  # its request target, for a row made before the path was normalised


def row(
    arrival: Arrival,
    ctx: RequestContext,
    status: int,
    bytes_out: int,
    reason: str | None,
    journal_id: str,
) -> AuditRow:
    route, user = ctx.route, ctx.user
    length = arrival.length
    # By position, in audit_row's order (keywords cost 1 us more per call).
    return audit_row(
        time.time(),  # ts
        ctx.request_id,
        user.id if user is not None else None,
        user.username if user is not None else None,
        user.role if user is not None else None,
        ctx.method,
        # The normalised path; before the route stage set it (a path it could
        # not normalise), the raw path. Never the query string.
        ctx.path or arrival.raw_path.partition("?")[0],
        route.path if route is not None else None,
        # upstream; a model call: the model called last (a fallback's when the first failed)
        ctx.model or (route.upstream if route is not None else None),
        status,
        time.monotonic() - ctx.started,  # latency
        ctx.client_ip or arrival.remote,
        length if length is not None else ctx.bytes_in,  # bytes_in
        bytes_out,
        reason,
        journal_id,
    )


def record(
    stores: Stores,
    arrival: Arrival,
    ctx: RequestContext,
    status: int,
    bytes_out: int,
    reason: str | None,
    model_call: bool,
) -> None:
    """The request's final row: to the writer, the journal and the metrics."""
    writer, metrics = stores.audit, stores.metrics
    assert writer is not None  # both bound at start-up, before the first request
    assert metrics is not None
    journal = writer.journal
    streamed = ctx.journal_id  # set: a provisional record went out with the head
    journal_id = streamed or journal.new_id()
    final = row(arrival, ctx, status, bytes_out, reason, journal_id)
    writer.submit(final)
    route = ctx.route
    access = stores.access
    if access is not None:
        model = ctx.model or (route.model if route is not None else None)
        access.write(access_line(final, model, ctx.trace_id))
    report = None
    if model_call and route is not None and route.model is not None:
        # Charged to the model that answered, with the number of models called and
        # the ones that failed before it (their failed attempts, in /admin/usage).
        model = ctx.model or route.model
        report = report_row(
            final, model, ctx.ttfb, ctx.usage, attempts=max(ctx.attempts, 1), failed=ctx.fell_back
        )
        writer.submit(report)
    if streamed:
        if ctx.journal_whole and report is None and reason is None:
            journal.forget(journal_id)  # recorded final at its head, and it went out so
        else:
            journal.end(journal_id, final, report)
    else:  # `prepared` writes it as the response head is prepared
        ctx.journal_id = journal_id
        ctx.journal_rows = (final, report)
    metrics.request(
        route.path if route is not None else NO_ROUTE,
        ctx.method,
        status,
        final.latency_ms / 1000,
        reason,
    )
    attempts = ctx.upstream_attempts
    if attempts is not None:
        for name, seconds, kind in attempts:
            metrics.attempt(name, seconds, kind)
    if ctx.span is not None and tracing.TRACING is not None:
        tracing.TRACING.finish(ctx, status, reason)
    usage = ctx.usage
    if report is not None and usage is not None:
        metrics.tokens(report.model, usage.prompt_tokens, usage.completion_tokens)
    upstream = final.upstream
    if (
        upstream is not None
        and reason is not None
        and (reason.startswith("upstream_") or reason == "no_healthy_upstream")
    ):
        metrics.upstream_error(upstream, reason)  # upstream_unreachable, _timeout, _reset, …


def record_error(
    stores: Stores, arrival: Arrival, ctx: RequestContext, error: GatewayError
) -> bytes:
    """The row of a request answered with `error`; returns the problem body to send.

    Its length is the bytes out. A 5xx on a model route is a failed model call;
    a 4xx is a refusal (token, role, limit, body) that never reached the model."""
    body = render(error, ctx.request_id)
    record(stores, arrival, ctx, error.status, len(body), error.code, error.status >= 500)
    return body


def prepared(
    stores: Stores, arrival: Arrival, ctx: RequestContext, status: int, whole: int | None
) -> None:
    """Called as the response head is prepared: the request's audit record reaches the
    journal before any byte of it leaves. `whole`: the body's length when all of it goes
    out with the head; None when it is streamed."""
    writer = stores.audit
    if writer is None:
        return
    rows = ctx.journal_rows
    if rows is not None:  # made by `record` already: the final record
        ctx.journal_rows = None
        writer.journal.record(*rows)
    elif not ctx.journal_id:
        journal = writer.journal
        ctx.journal_id = journal_id = journal.new_id()
        if whole is not None:
            # The whole body goes with this head (the proxy's small ones): final now,
            # as long as it goes out whole; the final row says otherwise.
            ctx.journal_whole = True
            final = row(arrival, ctx, status, whole, None, journal_id)
            journal.begin(journal_id, final, final=True)
        else:
            # Streamed: provisional until the final row.
            provisional = row(arrival, ctx, status, 0, INTERRUPTED, journal_id)
            journal.begin(journal_id, provisional)
