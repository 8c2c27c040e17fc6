"""routes.yaml's server (listen, TLS, CORS), audit and database sections → their frozen configs.

Each parser reads one top-level section strictly (unknown keys are problems)
and falls back to the schema's defaults when the section is absent.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import cast

from gateway.config.bounded import duration, read_duration, read_whole, whole_range
from gateway.config.schema.database import (
    DEFAULT_AUDIT,
    DEFAULT_DATABASE,
    AuditConfig,
    DatabaseConfig,
)
from gateway.config.schema.fields import key_doc
from gateway.config.schema.server import (
    DEFAULT_HSTS,
    AccessLogTarget,
    CorsConfig,
    IPNetwork,
    RedisFailure,
    ServerConfig,
    TLSConfig,
)
from gateway.config.units import parse_size
from gateway.config.yamlsource import Invalid, Problems, Section, Value
from gateway.tls.files import pair_problem

# A web origin as the Fetch standard serialises it: scheme://host[:port], no path
_ORIGIN = re.compile(r"https?://[a-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9a-f:]+\](:[0-9]{1,5})?")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name or method
_FIELD_VALUE = re.compile(r"[\x20-\x7e]{0,200}")  # a header value we send (RFC 9110 §5.5)


def parse_server(top: Section, base_dir: Path) -> ServerConfig:
    """The `server:` section; the defaults when it is absent or not a mapping."""
    default = ServerConfig()
    sec = top.subsection("server")
    if sec is None:
        return default
    host, port = sec.field("listen", lambda v: parse_listen(v), (default.host, default.port))
    server = ServerConfig(
        host=host,
        port=port,
        tls=sec.field("tls", lambda v: _tls(v, base_dir, top, port), None),
        trusted_proxies=sec.field("trusted_proxies", _networks, ()),
        max_body=sec.field("max_body", lambda v: v.convert(parse_size), default.max_body),
        shutdown_grace=read_duration(sec, default, "shutdown_grace"),
        redis_failure=sec.field("redis_failure", _failure_mode, default.redis_failure),
        cors=sec.field("cors", lambda v: _cors(v, sec.problems), None),
        header_timeout=read_duration(sec, default, "header_timeout"),
        keepalive_timeout=read_duration(sec, default, "keepalive_timeout"),
        max_connections=read_whole(sec, default, "max_connections"),
        body_timeout=read_duration(sec, default, "body_timeout"),
        status_listen=sec.field("status_listen", parse_listen, None),
        access_log=sec.field("access_log", _access_log, default.access_log),
        server_header=sec.field("server_header", _server_header, default.server_header),
    )
    sec.check_unknown(
        "listen, tls, trusted_proxies, max_body, shutdown_grace, redis_failure, cors, "
        "header_timeout, keepalive_timeout, max_connections, body_timeout, status_listen, "
        "access_log, server_header"
    )
    _distinct_ports(sec, server)
    return server


def _server_header(value: Value) -> str:
    """A field value (RFC 9110 §5.5): visible ASCII and inner spaces; "" for none."""
    raw = value.scalar()
    text = "" if raw is None else str(raw)  # `server_header:` alone, like "": no header
    if isinstance(raw, bool) or text != text.strip() or not _FIELD_VALUE.fullmatch(text):
        raise Invalid(
            f"{value.key}: {text!r} is not a header value "
            "(printable ASCII up to 200 characters, no leading or trailing space); "
            '"" for no header',
            value.line,
        )
    return text


def _distinct_ports(sec: Section, server: ServerConfig) -> None:
    """server.status_listen must not take the port of `listen` or of tls.redirect_http."""
    status = server.status_listen
    if status is None or status[1] == 0:
        return
    taken = {server.port: "listen"}
    if server.tls is not None and server.tls.redirect_http is not None:
        taken[server.tls.redirect_http[1]] = "tls.redirect_http"
    other = taken.get(status[1])
    if other is not None:
        sec.report(
            sec.get("status_listen"),
            f"server.status_listen: port {status[1]} is server.{other}'s; pick another",
        )


def _cors(value: Value, problems: Problems) -> CorsConfig:
    sec = value.section(problems)
    default = CorsConfig(origins=frozenset())

    def origins(v: Value) -> frozenset[str]:
        found = set()
        for item in v.items():
            text = item.text().rstrip("/").lower()
            if text != "*" and not _ORIGIN.fullmatch(text):
                raise Invalid(
                    f"{item.key}: {item.text()!r} is not an origin "
                    "(scheme://host[:port], no path) or *",
                    item.line,
                )
            found.add(text)
        if not found:
            raise Invalid(f"{v.key}: name at least one origin", v.line)
        return frozenset(found)

    def tokens(v: Value) -> tuple[str, ...]:
        for item in v.items():
            if not _TOKEN.fullmatch(item.text()):
                raise Invalid(f"{item.key}: {item.text()!r} is not a header or method name")
        return tuple(item.text() for item in v.items())

    cors = CorsConfig(
        origins=sec.field("origins", origins, frozenset()),
        credentials=sec.field("credentials", Value.boolean, default.credentials),
        max_age=read_duration(sec, default, "max_age"),
        headers=sec.field("headers", tokens, default.headers),
        methods=tuple(m.upper() for m in sec.field("methods", tokens, default.methods)),
        expose=sec.field("expose", tokens, default.expose),
    )
    sec.check_unknown("origins, credentials, max_age, headers, methods, expose")
    if not cors.origins and sec.get("origins") is None:
        sec.report(value, f"{value.key}.origins: required (the web origins allowed)")
    if "*" in cors.origins and cors.credentials:
        sec.report(
            value,
            f"{value.key}: origins * cannot go with credentials: true "
            "(browsers refuse it); list the origins",
        )
    return cors


def parse_audit(top: Section, base_dir: Path) -> AuditConfig:
    """The `audit:` section; relative paths resolve in `base_dir`."""
    default = AuditConfig(spool=base_dir / DEFAULT_AUDIT.spool)
    sec = top.subsection("audit")
    if sec is None:
        return default
    audit = AuditConfig(
        queue_size=read_whole(sec, default, "queue_size"),
        batch_size=read_whole(sec, default, "batch_size"),
        flush_interval=read_duration(sec, default, "flush_interval"),
        spool=sec.field("spool", lambda v: base_dir / v.text(), default.spool),
        journal=sec.field("journal", lambda v: base_dir / v.text(), default.journal),
    )
    sec.check_unknown("queue_size, batch_size, flush_interval, spool, journal")
    if audit.batch_size > audit.queue_size:
        sec.report(
            sec.get("batch_size"),
            f"audit.batch_size: {audit.batch_size} is more than audit.queue_size "
            f"({audit.queue_size}); a batch is taken from the queue",
        )
    return audit


def parse_database(top: Section) -> DatabaseConfig:
    """The `database:` section: how long a database call may take."""
    sec = top.subsection("database")
    if sec is None:
        return DEFAULT_DATABASE
    timeout = duration(DatabaseConfig, "timeout")
    database = DatabaseConfig(timeout=sec.field("timeout", timeout, DEFAULT_DATABASE.timeout))
    sec.check_unknown("timeout")
    return database


def _failure_mode(value: Value) -> RedisFailure:
    text = value.text()
    modes = key_doc(ServerConfig, "redis_failure").choices
    if text in modes:
        return cast(RedisFailure, text)
    raise Invalid(f"{value.key}: must be {' or '.join(modes)}, not {text!r}")


def _access_log(value: Value) -> AccessLogTarget:
    if value.scalar() is False:
        return "off"  # YAML 1.1 reads a bare `off` as false
    text = value.text()
    targets = key_doc(ServerConfig, "access_log").choices
    if text in targets:
        return cast(AccessLogTarget, text)
    raise Invalid(f"{value.key}: must be {', '.join(targets)}, not {text!r}")


def parse_listen(value: Value) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:8443` for IPv6; `:8080` for every interface) → (host, port)."""
    text = str(value.scalar())
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise Invalid(f"{value.key}: expected HOST:PORT, e.g. 127.0.0.1:8443, got {text!r}")
    port = int(port_text)
    low, high = whole_range(ServerConfig, "port")
    if not low <= port <= high:
        raise Invalid(f"{value.key}: port {port} is out of range {low}-{high}")
    host = host.strip("[]") or "0.0.0.0"
    return host, port


def _tls(value: Value, base_dir: Path, top: Section, port: int) -> TLSConfig:
    sec = value.section(top.problems)
    cert = sec.field("cert", lambda v: base_dir / v.text(), None)
    key = sec.field("key", lambda v: base_dir / v.text(), None)
    hsts = sec.field("hsts", lambda v: int(duration(TLSConfig, "hsts")(v)), DEFAULT_HSTS)
    redirect = sec.field("redirect_http", parse_listen, None)
    sec.check_unknown("cert, key, hsts, redirect_http")
    if cert is None or key is None:
        raise Invalid(f"{value.key}: needs both cert and key")
    problem = pair_problem(cert, key)
    if problem is not None:
        which, message = problem
        sec.report(sec.get(which), f"{value.key}.{which}: {message}")
    if redirect is not None and redirect[1] == port and port != 0:
        sec.report(
            sec.get("redirect_http"),
            f"{value.key}.redirect_http: port {port} is the TLS listener's own; pick another",
        )
    return TLSConfig(cert=cert, key=key, hsts=hsts, redirect_http=redirect)


def _networks(value: Value) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for item in value.items():
        text = item.text()
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise Invalid(f"{item.key}: {text!r} is not an IP address or CIDR", item.line) from None
    return tuple(networks)
