"""The typed, frozen form of routes.yaml: what every stage is built from.

Each field says its type, default and meaning; `loader.py` is the only code
that makes these objects, and it checks every bound written here. Nothing on
the request path reads a dict of config.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from gateway.config.policies import Policy
from gateway.config.units import Rate

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_MAX_BODY = 10 * 1024 * 1024
LOGIN_FAILURES = Rate(5, 900.0)
AuthMode = Literal["required", "none"]


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """server.tls: the certificate chain and key the listener presents."""

    cert: Path
    key: Path


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


@dataclass(frozen=True, slots=True)
class HashingConfig:
    """auth.password_hashing: argon2id cost (RFC 9106 low-memory profile by default)."""

    time_cost: int = 3  # passes
    memory_cost: int = 64 * 1024 * 1024  # bytes
    parallelism: int = 4


DEFAULT_HASHING = HashingConfig()


@dataclass(frozen=True, slots=True)
class KeyConfig:
    """auth.keys[i]: one signing/verification key; the first with private material signs."""

    kid: str
    secret: bytes | None = field(default=None, repr=False)  # HS256: raw UTF-8 bytes
    private_key: Path | None = None  # RS256/ES256/EdDSA: PEM file
    public_key: Path | None = None  # PEM file; derived from private_key when absent
    line: int = 0


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """auth: the tokens the gateway issues and accepts."""

    issuer: str = "gateway"
    algorithm: str = "HS256"  # HS256 | RS256 | ES256 | EdDSA
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


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """rate_limit: `60/min` or {limit, per, key}; key user (default) | ip | route | header:NAME."""

    rate: Rate
    key: str = "user"


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """One base URL of an upstream: scheme, host, port and an optional path prefix."""

    url: str  # as written, for display
    scheme: str
    host: str
    port: int
    base_path: str  # "" or "/prefix" without a trailing slash
    weight: int = 1

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """upstreams.NAME: where proxied requests go, and how long they may take."""

    name: str
    targets: tuple[UpstreamTarget, ...]
    timeout: float = 30.0  # whole exchange: headers and body
    connect_timeout: float = 2.0
    first_byte_timeout: float | None = None  # until response headers; None: only `timeout`
    max_connections: int = 100  # pooled keep-alive connections per target
    forward_authorization: bool = False  # pass the client's Authorization header on
    pass_host: bool = False  # keep the client's Host (else the target's)
    line: int = 0


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """models.NAME: the AI-team shorthand; expands to an upstream plus a route."""

    name: str
    usage: str | None = None  # usage reader, e.g. "openai"
    token_limit: RateLimitConfig | None = None
    fallback: tuple[str, ...] = ()
    line: int = 0


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
    once it does. Rule: batch_size <= queue_size.
    """

    queue_size: int = 100_000  # rows waiting in memory (>= 1); beyond it rows are dropped, counted
    batch_size: int = 500  # rows per INSERT (>= 1); a full batch is written at once
    flush_interval: float = 0.25  # seconds (> 0) a partial batch may wait
    # JSON-lines file rows go to while the database is down; relative paths
    # resolve beside routes.yaml (the loader makes this absolute)
    spool: Path = Path("audit.spool")


DEFAULT_AUDIT = AuditConfig()


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
