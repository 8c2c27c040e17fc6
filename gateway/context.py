"""Per-request state carried through the chain, and the app's typed keys."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web

from gateway.audit.rows import AuditRow, ReportRow
from gateway.config.schema import Route
from gateway.gcra import Decision
from gateway.routing import NO_PARAMS
from gateway.runtime import Runtime, RuntimeHolder
from gateway.services import Services
from gateway.usage import Usage


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as the verified token and the user's current state say."""

    id: str  # the token's sub: the user's id
    username: str
    role: str  # the user's role now (a change applies at the next request)
    jti: str
    exp: float  # the access token's expiry, epoch seconds


@dataclass(slots=True)
class RequestContext:
    """What the stages learn about one request; created by the request-id stage."""

    request_id: str
    started: float  # time.monotonic() at arrival
    runtime: Runtime | None = None  # the config this request runs on, start to end
    route: Route | None = None
    params: Mapping[str, str] = field(default_factory=lambda: NO_PARAMS)  # {name} values
    path: str = ""  # normalised path
    query: str = ""  # the raw query string, passed on unchanged
    outcome: str = ""  # e.g. client_gone, upstream_reset: why a response ended early
    client_ip: str = ""  # right-most address not in server.trusted_proxies
    user: Principal | None = None  # set by the authentication stage
    # RateLimit-* headers for this response, set by the rate-limit stage and
    # stamped on whatever response goes out (local, proxied or a problem)
    rate_headers: tuple[tuple[str, str], ...] = ()
    # Access-Control-* for an allowed cross-origin caller (server.cors)
    cors_headers: tuple[tuple[str, str], ...] = ()
    # the route's rate-limit decision when the Redis gate already made it
    rate_decision: Decision | None = None
    bytes_in: int = 0  # request body bytes read (streamed bodies are counted)
    ttfb: float | None = None  # seconds from arrival to the upstream's response head
    usage: Usage | None = None  # token usage of a model call with a `usage:` format
    model: str | None = None  # the model called last (a fallback's, after a failure)
    attempts: int = 0  # models called for this request, fallbacks included
    # the audit journal (gateway/audit/journal.py): this request's journal id once a
    # record or row has one, and its final rows while they wait for the response head
    journal_id: str = ""
    journal_rows: tuple[AuditRow, ReportRow | None] | None = None
    journal_whole: bool = False  # its record went out final with a whole-body head


CTX = web.RequestKey("gateway.ctx", RequestContext)
HOLDER = web.AppKey("gateway.runtime", RuntimeHolder)
SERVICES = web.AppKey("gateway.services", Services)
