"""routes.yaml's server section: the listener, its TLS and CORS, client limits and timeouts."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from gateway.config.schema.fields import config_dataclass, doc

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_MAX_BODY = 10 * 1024 * 1024
# No Strict-Transport-Security unless the operator sets server.tls.hsts: once a browser has
# seen it, the host is HTTPS-only for max-age, so a development certificate must never send it.
DEFAULT_HSTS = 0
RedisFailure = Literal["open", "closed"]
AccessLogTarget = Literal["stdout", "stderr", "off"]


@config_dataclass
class TLSConfig:
    """server.tls: the certificate chain and key the listener presents.

    Both files must exist and load together (checked at load). They are
    watched while serving: a changed pair is used for new handshakes.
    """

    cert: Path = doc("PEM chain: the server certificate first, then intermediates", kind="path")
    key: Path = doc("unencrypted PEM private key of the certificate", kind="path")
    hsts: int = doc(
        "Strict-Transport-Security max-age (RFC 6797), whole seconds, e.g. 365d; "
        "0: no header (never sent unless set)",
        default=DEFAULT_HSTS,
        kind="duration",
        default_text="0",
    )
    redirect_http: tuple[str, int] | None = doc(
        "HOST:PORT of a plain-HTTP listener answering every request with a 308 to https",
        default=None,
        kind="HOST:PORT",
    )


@config_dataclass
class CorsConfig:
    """server.cors: which web origins may call the gateway from a browser (Fetch standard)."""

    origins: frozenset[str] = doc(
        'the allowed origins, "scheme://host[:port]"; * for any (then no credentials)',
        kind="list of origins",
    )
    credentials: bool = doc(
        "let browsers send cookies and Authorization (needs listed origins)", default=False
    )
    max_age: float = doc("how long a browser may cache a preflight answer", default=600.0)
    headers: tuple[str, ...] = doc(
        "request headers a browser may send",
        default=("Authorization", "Content-Type", "X-Request-Id", "X-CSRF-Token"),
        kind="list of header names",
    )
    methods: tuple[str, ...] = doc(
        "methods a browser may use",
        default=("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"),
        kind="list of methods",
    )
    expose: tuple[str, ...] = doc(
        "response headers a page's script may read",
        default=(
            "X-Request-Id",
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "RateLimit-Reset",
            "Retry-After",
            "X-Gateway-Model",
        ),
        kind="list of header names",
    )


@config_dataclass
class ServerConfig:
    """server: how the gateway listens."""

    host: str = doc(
        "HOST:PORT to listen on ([::1]:8443 for IPv6, :8080 for every interface)",
        default="127.0.0.1",
        key="listen",
        kind="HOST:PORT",
        default_text="127.0.0.1:8080",
    )
    port: int = doc("the port of `listen`", default=8080, key=None, minimum=0, maximum=65535)
    tls: TLSConfig | None = doc(
        "certificate and key to serve HTTPS; absent: plain HTTP", default=None
    )
    trusted_proxies: tuple[IPNetwork, ...] = doc(
        "peers whose X-Forwarded-* headers are believed",
        default=(),
        kind="list of IPs or CIDRs",
    )
    max_body: int = doc(
        "largest request body; 413 above it, checked while streaming too",
        default=DEFAULT_MAX_BODY,
        kind="size",
    )
    shutdown_grace: float = doc("how long in-flight requests get after SIGTERM", default=30.0)
    redis_failure: RedisFailure = doc(
        "Redis unreachable: open serves with in-process limits, closed answers 503",
        default="open",
        choices=("open", "closed"),
    )
    cors: CorsConfig | None = doc(
        "origins allowed to call from a browser; absent: no CORS headers", default=None
    )
    # a client that sent part of a head gets 408 before the connection closes
    header_timeout: float = doc(
        "time for a whole request head, from connect or its first byte; then closed",
        default=10.0,
        above=0,
    )
    keepalive_timeout: float = doc(
        "how long an idle keep-alive connection stays open", default=75.0, above=0
    )
    # at the cap a new connection replaces the one idle (or reading its head) longest,
    # and is refused only when all are busy
    max_connections: int = doc(
        "open client connections per process; at the cap the idlest is replaced",
        default=10_000,
        minimum=1,
    )
    body_timeout: float = doc(
        "how long a local endpoint waits for a whole body; then 408", default=30.0, above=0
    )
    access_log: AccessLogTarget = doc(
        "one JSON line per finished request to stdout, stderr, or off",
        default="stdout",
        choices=("stdout", "stderr", "off"),
    )
    # Kong's status_listen, Envoy's admin port: probes that never queue behind client traffic
    status_listen: tuple[str, int] | None = doc(
        "HOST:PORT of a plain-HTTP listener serving /healthz and /readyz only, "
        "outside max_connections; absent: none",
        default=None,
        kind="HOST:PORT",
    )
    # aiohttp's own value names Python's and aiohttp's versions, a map for attackers;
    # set on every response (a proxied one's upstream Server replaced, as Envoy and nginx do)
    server_header: str = doc(
        'the Server header of every response, the proxied ones included; "": none',
        default="gateway",
        kind="text",
    )
