"""The typed, frozen form of routes.yaml: what every stage is built from.

Each field says its type, default and meaning; the parsers of this package
(`loader.py` and its `*_section.py` modules) are the only code that makes these
objects, and they check every bound written here (a named bound is a constant
here that they use). Nothing on the request path reads a dict of config.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, get_args

from gateway.config.policies import Policy
from gateway.config.units import Rate

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_MAX_BODY = 10 * 1024 * 1024
LOGIN_FAILURES = Rate(5, 900.0)
AuthMode = Literal["required", "none"]
DEFAULT_HSTS = 365 * 86400  # one year, as browsers' preload lists expect


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """server.tls: the certificate chain and key the listener presents.

    Both files must exist and load together (checked at load). They are
    watched while serving: a changed pair is used for new handshakes.
    """

    cert: Path  # PEM chain: the server certificate first, then intermediates
    key: Path  # unencrypted PEM private key of the certificate
    hsts: int = DEFAULT_HSTS  # Strict-Transport-Security max-age, whole seconds; 0: no header
    # HOST:PORT of a plain-HTTP listener that answers every request with a
    # 308 to the same path on https; None: no such listener
    redirect_http: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class CorsConfig:
    """server.cors: which web origins may call the gateway from a browser (Fetch standard)."""

    origins: frozenset[str]  # "scheme://host[:port]", lower-case; {"*"}: any (no credentials)
    credentials: bool = False  # cookies / Authorization from the browser: needs listed origins
    max_age: float = 600.0  # seconds a browser may cache a preflight answer
    headers: tuple[str, ...] = ("Authorization", "Content-Type", "X-Request-Id", "X-CSRF-Token")
    methods: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
    expose: tuple[str, ...] = (
        "X-Request-Id",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
        "Retry-After",
        "X-Gateway-Model",
    )


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """server: how the gateway listens."""

    host: str = "127.0.0.1"  # listen: HOST:PORT ([::1]:8443 for IPv6)
    port: int = 8080
    tls: TLSConfig | None = None  # absent: plain HTTP
    trusted_proxies: tuple[IPNetwork, ...] = ()  # peers whose X-Forwarded-* are believed
    max_body: int = DEFAULT_MAX_BODY  # bytes; 413 above it, checked while streaming too
    shutdown_grace: float = 30.0  # seconds in-flight requests get after SIGTERM
    # Redis unreachable: "open" keeps serving with in-process limits (logged),
    # "closed" refuses requests on rate-limited routes with 503 until it is back
    redis_failure: Literal["open", "closed"] = "open"
    cors: CorsConfig | None = None  # absent: no CORS headers, preflights are ordinary requests
    # seconds (> 0) a client has for a complete request head, from connect or from
    # the head's first byte; then it is disconnected (408 if part of a head came)
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0  # seconds (> 0) an idle keep-alive connection stays open
    # open client connections per process (>= 1); at the cap a new one replaces the
    # connection idle (or reading its head) longest, and is refused only when all are busy
    max_connections: int = 10_000
    body_timeout: float = 30.0  # seconds (> 0) a local endpoint waits for a whole body; then 408


@dataclass(frozen=True, slots=True)
class HashingConfig:
    """auth.password_hashing: argon2id cost (RFC 9106 low-memory profile by default)."""

    time_cost: int = 3  # passes
    memory_cost: int = 64 * 1024 * 1024  # bytes
    parallelism: int = 4
    # The bounded pool sign-ins hash in (read at start-up, not on reload):
    # threads (None: one fewer than the CPUs, at least 1) and jobs that may
    # wait for one (None: 16 per thread); beyond both, 503 `busy`.
    workers: int | None = None
    queue: int | None = None


DEFAULT_HASHING = HashingConfig()


@dataclass(frozen=True, slots=True)
class KeyConfig:
    """auth.keys[i]: one signing/verification key; the first with private material signs."""

    kid: str
    secret: bytes | None = field(default=None, repr=False)  # HS256: raw UTF-8 bytes
    private_key: Path | None = None  # RS256/ES256/EdDSA: PEM file
    public_key: Path | None = None  # PEM file; derived from private_key when absent
    line: int = 0


ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")  # auth.algorithm: the JWT algorithms


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """auth: the tokens the gateway issues and accepts."""

    issuer: str = "gateway"
    algorithm: str = "HS256"  # one of ALGORITHMS
    access_ttl: float = 900.0  # seconds
    refresh_ttl: float = 14 * 86400.0
    allow_registration: bool = False
    default_role: str = "user"  # role given to self-registered users
    audience: str | None = None  # checked when set
    leeway: float = 30.0  # seconds of clock skew tolerated on exp/iat
    keys: tuple[KeyConfig, ...] = ()  # empty with HS256: GATEWAY_JWT_SECRET
    password_min_length: int = 12
    login_failures: Rate = LOGIN_FAILURES  # failed logins per username, and per IP
    token_cache: int = 10_000  # verified tokens kept (never past exp or a revocation)
    hashing: HashingConfig = DEFAULT_HASHING
    # cookie mode for browser frontends: the refresh token travels in an HttpOnly
    # cookie (never in a body JavaScript can read), with a double-submit CSRF check
    refresh_cookie: bool = False


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """rate_limit: `60/min` or {limit, per, key}; key user (default) | ip | route | header:NAME."""

    rate: Rate
    key: str = "user"


MAX_WEIGHT = 1000  # a target's largest weight


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """One base URL of an upstream: scheme, host, port and an optional path prefix."""

    url: str  # as written, for display
    scheme: str
    host: str
    port: int
    base_path: str  # "" or "/prefix" without a trailing slash
    weight: int = 1  # 1 to MAX_WEIGHT: its share of the upstream's requests

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


Balance = Literal["round_robin", "least_outstanding"]
BALANCE_MODES: tuple[Balance, ...] = get_args(Balance)


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    """upstreams.NAME.health_check: active checks, one GET per target every `interval`.

    A 2xx or 3xx answer within `timeout` is a success. A healthy target turns
    unhealthy after `unhealthy` failures in a row, an unhealthy one healthy
    again after `healthy` successes in a row.
    """

    path: str = "/health"  # starts with /; appended to the target's base path
    interval: float = 5.0  # seconds (> 0) between rounds of checks
    timeout: float = 2.0  # seconds (> 0) one check may take
    healthy: int = 2  # consecutive successes (>= 1) to turn healthy
    unhealthy: int = 3  # consecutive failures (>= 1) to turn unhealthy


@dataclass(frozen=True, slots=True)
class PassiveConfig:
    """upstreams.NAME.passive: ejection on the outcome of real requests.

    After `failures` connection failures or 5xx answers in a row a target is
    ejected for `backoff`, doubled at each ejection in a row up to
    `max_backoff`; then one half-open probe request decides. Rule:
    backoff <= max_backoff. An upstream with one target is never ejected.
    """

    failures: int = 5  # consecutive failures (>= 1) that eject a target
    backoff: float = 10.0  # seconds (> 0) of the first ejection
    max_backoff: float = 300.0  # seconds: the doubling stops here


@dataclass(frozen=True, slots=True)
class RetryBudgetConfig:
    """upstreams.NAME.retry_budget: `20%` or {ratio: 20%, min_per_second: 3}.

    Retries may be at most `ratio` of this upstream's requests over the last
    10 seconds; `min_per_second` retries are allowed each second regardless,
    so an upstream with little traffic can still retry.
    """

    ratio: float = 0.2  # 0-1, written as a percentage (20%) or a fraction (0.2)
    min_per_second: int = 3  # >= 0


DEFAULT_PASSIVE = PassiveConfig()
DEFAULT_RETRY_BUDGET = RetryBudgetConfig()


@dataclass(frozen=True, slots=True)
class UpstreamTLSConfig:
    """upstreams.NAME.tls: how the gateway checks an https:// upstream and proves itself to it.

    Rule: cert and key come together (a client certificate for mutual TLS);
    every file must exist and load (checked at load).
    """

    ca: Path | None = None  # PEM CA bundle that signs the upstream; None: the system CAs
    cert: Path | None = None  # client certificate chain (PEM) for mutual TLS
    key: Path | None = None  # its unencrypted PEM private key
    verify: bool = True  # false: accept any certificate (logged as a warning at start)


UPSTREAM_TIMEOUT = 30.0  # seconds: an upstream's default whole-exchange timeout
MAX_RETRIES = 10  # an upstream's largest `retries`


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """upstreams.NAME: where proxied requests go, and how long they may take."""

    name: str
    targets: tuple[UpstreamTarget, ...]
    # whole exchange: the wait for a free connection, connect, headers and body
    timeout: float = UPSTREAM_TIMEOUT
    connect_timeout: float = 2.0
    first_byte_timeout: float | None = None  # until response headers; None: only `timeout`
    max_connections: int = 100  # pooled keep-alive connections per target
    # requests (>= 0) that may wait for a connection, all targets together;
    # more get 503 upstream_busy at once
    max_pending: int = 100
    forward_authorization: bool = False  # pass the client's Authorization header on
    pass_host: bool = False  # keep the client's Host (else the target's)
    balance: Balance = "round_robin"  # smooth weighted round-robin | least_outstanding
    health_check: HealthCheckConfig | None = None  # None: no active checks
    passive: PassiveConfig = DEFAULT_PASSIVE
    # extra attempts, each on another target, for idempotent bodiless requests
    # whose connection failed (the request never reached a target); 0 to MAX_RETRIES
    retries: int = 2
    retry_budget: RetryBudgetConfig = DEFAULT_RETRY_BUDGET
    tls: UpstreamTLSConfig | None = None  # https:// targets; None: system CAs, full checks
    line: int = 0


MAX_ATTEMPTS = 10  # a model's largest `max_attempts`


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """models.NAME: the AI-team shorthand; expands to an upstream plus a route."""

    name: str
    usage: str | None = None  # usage reader, e.g. "openai"
    token_limit: RateLimitConfig | None = None
    fallback: tuple[str, ...] = ()  # models tried in turn when this one fails before a byte
    # calls made in all, this model's included (1 to MAX_ATTEMPTS); 0: one per model in the chain
    max_attempts: int = 0
    # seconds from arrival within which a response head must come, across every
    # attempt; None: this model's `timeout`
    fallback_budget: float | None = None
    line: int = 0

    @property
    def chain(self) -> tuple[str, ...]:
        """The models to try, in order: this one, then its fallbacks."""
        return (self.name, *self.fallback)

    @property
    def attempts(self) -> int:
        """How many calls one request may make, in all."""
        return self.max_attempts or len(self.fallback) + 1


@dataclass(frozen=True, slots=True)
class Route:
    """routes[i]: a path pattern sent to a local handler or an upstream."""

    index: int  # position in first-match order
    path: str  # normalised pattern: literal segments, {name}, trailing **
    methods: frozenset[str] | None  # None: every method
    handler: str | None = None
    upstream: str | None = None
    strip_prefix: str | None = None
    auth: AuthMode = "required"
    roles: tuple[str, ...] = ()  # empty: any valid token
    rate_limit: RateLimitConfig | None = None
    model: str | None = None  # set on routes generated from models:
    # resend an idempotent request without a body whose connection was lost after
    # it was sent (on another target when there is one, within retries and budget)
    retry_after_send: bool = False
    source: str = ""  # FILE:LINE of the entry, for messages

    @property
    def target(self) -> str:
        return f"upstream {self.upstream}" if self.upstream else f"handler {self.handler}"


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """audit: how the per-request rows reach the database (read once, at start-up).

    Rows wait in a bounded in-memory queue and are written in batches by one
    background task; a request never waits on the database. While the database
    does not answer, batches are appended to `spool` and replayed, in order,
    once it does. Every answered request's row is also appended to a journal in
    `journal` before or as its response ends, so a killed process loses none of
    them: the next start replays it (gateway/audit/journal.py).
    Rule: batch_size <= queue_size.
    """

    queue_size: int = 100_000  # rows waiting in memory (>= 1); beyond it rows are dropped, counted
    # rows per INSERT (>= 1); a full batch is written at once. Small batches keep each
    # write's time on the event loop short (~1 ms for 200 rows), so no request waits long
    batch_size: int = 200
    flush_interval: float = 0.1  # seconds (> 0) a partial batch may wait
    # JSON-lines file rows go to while the database is down; relative paths
    # resolve beside routes.yaml (the loader makes this absolute)
    spool: Path = Path("audit.spool")
    # folder (mode 0700) of the write-ahead journal files (0600); None: `audit.journal`
    # beside the spool file. Relative paths resolve beside routes.yaml
    journal: Path | None = None


DEFAULT_AUDIT = AuditConfig()


DATABASE_TIMEOUT_BOUNDS = (0.1, 60.0)  # seconds: database.timeout's range, ends included


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """database: how long the gateway waits on its database (read once, at start-up).

    The database itself is GATEWAY_DATABASE_URL (default: gateway.db beside
    routes.yaml). A call that cannot reach it in time answers 503 database_down.
    """

    # seconds (DATABASE_TIMEOUT_BOUNDS) one database call may take, connecting and waiting for
    # a pooled connection included; also the driver's connect, statement and lock waits
    timeout: float = 5.0


DEFAULT_DATABASE = DatabaseConfig()


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration; swapped as one reference."""

    path: Path  # routes.yaml
    base_dir: Path  # relative paths resolve here
    file_hash: str  # sha256 of routes.yaml as read
    server: ServerConfig
    auth: AuthConfig
    policies_dir: Path
    upstreams: MappingProxyType[str, UpstreamConfig]
    models: MappingProxyType[str, ModelConfig]
    routes: tuple[Route, ...]
    # roles from policies_dir; every role a route or auth.default_role names is defined
    # in it (empty when the folder is missing and nothing names a role)
    policy: Policy = field(default_factory=Policy)
    audit: AuditConfig = DEFAULT_AUDIT
    database: DatabaseConfig = DEFAULT_DATABASE
