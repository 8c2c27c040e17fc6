"""Per-request state carried through the chain: one `RequestContext` per request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.routing import NO_PARAMS

if TYPE_CHECKING:
    from gateway.audit.rows import AuditRow, ReportRow
    from gateway.config.schema.routes import Route
    from gateway.pipeline.verdict import Principal
    from gateway.runtime import Runtime
    from gateway.state.gcra import Decision
    from gateway.usage import Usage

NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class Outcome(StrEnum):
    """Why a response ended otherwise than its status says; the audit row's reason.

    Set by the proxy (gateway/proxy/forward.py), read by the audit stage."""

    NONE = ""
    CLIENT_GONE = "client_gone"  # the client left before the whole response was sent
    BODY_TOO_LARGE = "body_too_large"  # a streamed request body passed server.max_body
    UPSTREAM_BUSY = "upstream_busy"  # max_pending requests were already waiting
    UPSTREAM_INVALID = "upstream_invalid"  # the upstream's answer was not valid HTTP
    UPSTREAM_TIMEOUT = "upstream_timeout"  # the upstream's timeout passed
    UPSTREAM_RESET = "upstream_reset"  # the upstream's connection was lost mid-exchange
    # a WebSocket the gateway closed (README "WebSockets"): 1008 when its caller failed
    # a new judgement (expired, revoked, deactivated, role); 1001 idle, too old, draining
    WS_POLICY = "websocket_policy_close"
    WS_IDLE = "websocket_idle"
    WS_MAX_DURATION = "websocket_max_duration"
    WS_DRAINING = "draining"


@dataclass(slots=True)
class RequestContext:
    """What the stages learn about one request; created by the request-id stage.

    It is the `RequestView` the decisions read (gateway/pipeline/verdict.py):
    method, normalised path, headers, client IP and the caller."""

    request_id: str
    started: float  # time.monotonic() at arrival
    method: str = ""
    headers: Mapping[str, str] = field(
        default_factory=lambda: NO_HEADERS
    )  # the request's (case-insensitive) headers
    runtime: Runtime | None = None  # the config this request runs on, start to end
    route: Route | None = None
    params: Mapping[str, str] = field(default_factory=lambda: NO_PARAMS)  # {name} values
    path: str = ""  # normalised path
    query: str = ""  # the raw query string, passed on unchanged
    outcome: Outcome = Outcome.NONE  # why a response ended early, if it did
    client_ip: str = ""  # right-most address not in server.trusted_proxies
    user: Principal | None = None  # set by the authentication stage
    upgrade: bool = False  # a WebSocket upgrade its route takes (websocket: true)
    # RateLimit-* headers for this response, set by the rate-limit stage (or the
    # token quota) and stamped on whatever response goes out (local, proxied or a problem)
    rate_headers: tuple[tuple[str, str], ...] = ()
    # Access-Control-* for an allowed cross-origin caller (server.cors)
    cors_headers: tuple[tuple[str, str], ...] = ()
    # the route's bucket, already counted by the Redis gate in the authentication
    # stage's lookup (one round trip); the rate-limit stage judges it
    rate_counted: Decision | None = None
    bytes_in: int = 0  # request body bytes read (streamed bodies are counted)
    ttfb: float | None = None  # seconds from arrival to the upstream's response head
    usage: Usage | None = None  # token usage of a model call with a `usage:` format
    model: str | None = None  # the model called last (a fallback's, after a failure)
    attempts: int = 0  # models called for this request, fallbacks included
    # the models whose calls failed and handed the request on to a fallback, in order
    # (the requested model first): /admin/usage counts their failed attempts
    fell_back: list[str] | None = None
    # each try on an upstream target: (upstream, seconds to its head, failure kind or None),
    # for /metrics (gateway/metrics.py ATTEMPT_KINDS); None until the first
    upstream_attempts: list[tuple[str, float | None, str | None]] | None = None
    # with traces on (gateway/tracing.py): the server span until it ends, and its trace id
    span: Any = None
    trace_id: str | None = None
    traceparent: str | None = None  # an unsampled request's, sent on to the upstream
    # the audit journal (gateway/audit/journal.py): this request's journal id once a
    # record or row has one, and its final rows while they wait for the response head
    journal_id: str = ""
    journal_rows: tuple[AuditRow, ReportRow | None] | None = None
    journal_whole: bool = False  # its record went out final with a whole-body head


CTX = web.RequestKey("gateway.ctx", RequestContext)
