"""routes.yaml → a validated, frozen `Config`, or a `ConfigError` listing every problem.

Parse strictly (unknown keys are errors), check every cross-reference, and
only then build; `gateway check`, `gateway serve` and reloads all come here.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path
from types import MappingProxyType
from typing import Literal
from urllib.parse import urlsplit

from gateway.config.policies import Policy, load_policies
from gateway.config.schema import (
    ALGORITHMS,
    BALANCE_MODES,
    DATABASE_TIMEOUT_BOUNDS,
    DEFAULT_AUDIT,
    DEFAULT_DATABASE,
    DEFAULT_HSTS,
    DEFAULT_PASSIVE,
    DEFAULT_RETRY_BUDGET,
    MAX_ATTEMPTS,
    MAX_RETRIES,
    MAX_WEIGHT,
    UPSTREAM_TIMEOUT,
    AuditConfig,
    AuthConfig,
    Balance,
    Config,
    CorsConfig,
    DatabaseConfig,
    HashingConfig,
    HealthCheckConfig,
    IPNetwork,
    KeyConfig,
    ModelConfig,
    PassiveConfig,
    RateLimitConfig,
    RetryBudgetConfig,
    Route,
    ServerConfig,
    TLSConfig,
    UpstreamConfig,
    UpstreamTarget,
    UpstreamTLSConfig,
)
from gateway.config.units import (
    Rate,
    format_duration,
    parse_duration,
    parse_positive_duration,
    parse_rate,
    parse_size,
)
from gateway.config.yamlsource import (
    Invalid,
    Problems,
    Section,
    Value,
    read_yaml,
)
from gateway.routing import compile_pattern, literal_prefix
from gateway.tls import ca_problem, pair_problem

# The local handlers a route may name. Kept beside the schema so `gateway
# check` needs no aiohttp; tests pin it to the handler registry.
KNOWN_HANDLERS: frozenset[str] = frozenset(
    {"auth.register", "auth.login", "auth.refresh", "auth.logout", "users", "admin"}
)

_METHOD = re.compile(r"^[A-Z]+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NO_NAMES: tuple[str, ...] = ()
_PARAM_NAME = re.compile(r"\{[^/{}]+\}")
_HEADER = re.compile(r"^[A-Za-z0-9-]+$")

_UPSTREAM_KEYS = (
    "targets",
    "timeout",
    "connect_timeout",
    "first_byte_timeout",
    "max_connections",
    "max_pending",
    "forward_authorization",
    "pass_host",
    "balance",
    "health_check",
    "passive",
    "retries",
    "retry_budget",
    "tls",
)
_ROUTE_KEYS = ("methods", "auth", "roles", "rate_limit", "retry_after_send")
_OFF = frozenset({"off", "none"})  # rate_limit values that turn a limit off
MODEL_TIMEOUT = 300.0  # models answer slowly: a long default whole-response timeout
MODEL_CONNECT_TIMEOUT = 5.0
# models cost per call: 60/min per user unless the entry says otherwise (`rate_limit: off`)
MODEL_RATE_LIMIT = RateLimitConfig(rate=Rate(60, 60.0), key="user")


def load_config(path: str | Path, extra_handlers: Iterable[str] = ()) -> Config:
    """Read and validate `path`; raise ConfigError naming FILE:LINE for each problem.

    `extra_handlers` names local handlers beyond KNOWN_HANDLERS that routes may use.
    """
    config_path = Path(path).resolve()
    problems = Problems()
    try:
        data = config_path.read_bytes()  # read once: the hash matches what was parsed
    except OSError as exc:
        problems.add(str(config_path), 0, f"cannot read: {exc.strerror or exc}")
        problems.raise_if_any()
        raise
    root = read_yaml(config_path, problems, data)
    problems.raise_if_any()
    assert root is not None
    known_handlers = KNOWN_HANDLERS | frozenset(extra_handlers)
    try:
        top = root.section(problems)
    except Invalid:
        problems.add(str(config_path), 1, "routes.yaml must be a mapping of sections")
        problems.raise_if_any()
        raise
    base_dir = config_path.parent

    # every role named in routes.yaml, with where: checked against policies/ at the end
    role_refs: list[tuple[str, Value]] = []
    server = _server(top, base_dir)
    auth = _auth(top, base_dir, role_refs)
    policies_dir = top.field("policies", lambda v: base_dir / v.text(), base_dir / "policies")
    upstreams: dict[str, UpstreamConfig] = {}
    declared: set[str] = set()  # every upstream written, valid or not
    upstreams_value = top.get("upstreams")
    if upstreams_value is not None:
        try:
            for name, value in upstreams_value.section(problems):
                declared.add(name)
                upstream = _upstream(name, value, problems, top)
                if upstream is not None:
                    upstreams[name] = upstream
        except Invalid as exc:
            top.report(upstreams_value, str(exc))

    # names used before all are known (models add upstreams): checked at the end
    upstream_refs: list[tuple[str, Value]] = []
    fallback_refs: list[tuple[str, Value]] = []
    routes: list[Route] = []
    routes_value = top.get("routes")
    if routes_value is not None:
        try:
            for item in routes_value.items():
                route = _route(
                    len(routes), item, problems, known_handlers, upstream_refs, role_refs
                )
                if route is not None:
                    routes.append(route)
        except Invalid as exc:
            top.report(routes_value, str(exc))

    models: dict[str, ModelConfig] = {}
    models_value = top.get("models")
    if models_value is not None:
        try:
            for name, value in models_value.section(problems):
                _model(
                    name, value, problems, top, upstreams, models, routes, fallback_refs, role_refs
                )
        except Invalid as exc:
            top.report(models_value, str(exc))

    audit = _audit(top, base_dir)
    database = _database(top)
    top.check_unknown("server, auth, policies, upstreams, models, routes, audit, database")
    _cross_check(routes, problems, str(config_path))
    _check_references(upstream_refs, fallback_refs, upstreams, declared, models, problems)
    policy = _policy(policies_dir, top.get("policies"), role_refs, problems)
    problems.raise_if_any()
    return Config(
        path=config_path,
        base_dir=base_dir,
        file_hash=hashlib.sha256(data).hexdigest(),
        server=server,
        auth=auth,
        policies_dir=policies_dir,
        upstreams=MappingProxyType(upstreams),
        models=MappingProxyType(models),
        routes=tuple(routes),
        policy=policy,
        audit=audit,
        database=database,
    )


def _server(top: Section, base_dir: Path) -> ServerConfig:
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
        shutdown_grace=sec.field(
            "shutdown_grace", lambda v: v.convert(parse_duration), default.shutdown_grace
        ),
        redis_failure=sec.field("redis_failure", _failure_mode, default.redis_failure),
        cors=sec.field("cors", lambda v: _cors(v, sec.problems), None),
        header_timeout=sec.field("header_timeout", _positive_duration, default.header_timeout),
        keepalive_timeout=sec.field(
            "keepalive_timeout", _positive_duration, default.keepalive_timeout
        ),
        max_connections=sec.field(
            "max_connections", lambda v: v.integer(minimum=1), default.max_connections
        ),
        body_timeout=sec.field("body_timeout", _positive_duration, default.body_timeout),
    )
    sec.check_unknown(
        "listen, tls, trusted_proxies, max_body, shutdown_grace, redis_failure, cors, "
        "header_timeout, keepalive_timeout, max_connections, body_timeout"
    )
    return server


_ORIGIN = re.compile(r"https?://[a-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9a-f:]+\](:[0-9]{1,5})?")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name or method


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
        max_age=sec.field("max_age", lambda v: v.convert(parse_duration), default.max_age),
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


def _audit(top: Section, base_dir: Path) -> AuditConfig:
    default = AuditConfig(spool=base_dir / DEFAULT_AUDIT.spool)
    sec = top.subsection("audit")
    if sec is None:
        return default
    audit = AuditConfig(
        queue_size=sec.field("queue_size", lambda v: v.integer(minimum=1), default.queue_size),
        batch_size=sec.field("batch_size", lambda v: v.integer(minimum=1), default.batch_size),
        flush_interval=sec.field("flush_interval", _positive_duration, default.flush_interval),
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


def _database(top: Section) -> DatabaseConfig:
    sec = top.subsection("database")
    if sec is None:
        return DEFAULT_DATABASE

    def timeout(v: Value) -> float:
        seconds = v.convert(parse_duration)
        low, high = DATABASE_TIMEOUT_BOUNDS
        if not low <= seconds <= high:
            raise Invalid(
                f"{v.key}: must be between {format_duration(low)} and {format_duration(high)}"
            )
        return seconds

    database = DatabaseConfig(timeout=sec.field("timeout", timeout, DEFAULT_DATABASE.timeout))
    sec.check_unknown("timeout")
    return database


def _failure_mode(value: Value) -> Literal["open", "closed"]:
    text = value.text()
    if text == "open":
        return "open"
    if text == "closed":
        return "closed"
    raise Invalid(f"{value.key}: must be open or closed, not {text!r}")


def parse_listen(value: Value) -> tuple[str, int]:
    text = str(value.scalar())
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise Invalid(f"{value.key}: expected HOST:PORT, e.g. 127.0.0.1:8443, got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise Invalid(f"{value.key}: port {port} is out of range 0-65535")
    host = host.strip("[]") or "0.0.0.0"
    return host, port


def _tls(value: Value, base_dir: Path, top: Section, port: int) -> TLSConfig:
    sec = value.section(top.problems)
    cert = sec.field("cert", lambda v: base_dir / v.text(), None)
    key = sec.field("key", lambda v: base_dir / v.text(), None)
    hsts = sec.field("hsts", lambda v: int(v.convert(parse_duration)), DEFAULT_HSTS)
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


def _upstream_tls(
    value: Value, problems: Problems, targets: tuple[UpstreamTarget, ...]
) -> UpstreamTLSConfig:
    base_dir = Path(value.file).parent  # relative paths resolve beside routes.yaml
    sec = value.section(problems)
    tls = UpstreamTLSConfig(
        ca=sec.field("ca", lambda v: base_dir / v.text(), None),
        cert=sec.field("cert", lambda v: base_dir / v.text(), None),
        key=sec.field("key", lambda v: base_dir / v.text(), None),
        verify=sec.field("verify", Value.boolean, True),
    )
    sec.check_unknown("ca, cert, key, verify")
    if targets and all(t.scheme != "https" for t in targets):
        sec.report(value, f"{value.key}: only applies to https:// targets")
    if tls.ca is not None and (ca_message := ca_problem(tls.ca)) is not None:
        sec.report(sec.get("ca"), f"{value.key}.ca: {ca_message}")
    if (tls.cert is None) != (tls.key is None):
        raise Invalid(f"{value.key}: a client certificate needs both cert and key")
    if tls.cert is not None and tls.key is not None:
        problem = pair_problem(tls.cert, tls.key)
        if problem is not None:
            which, message = problem
            sec.report(sec.get(which), f"{value.key}.{which}: {message}")
    return tls


def _networks(value: Value) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for item in value.items():
        text = item.text()
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise Invalid(f"{item.key}: {text!r} is not an IP address or CIDR", item.line) from None
    return tuple(networks)


def _auth(top: Section, base_dir: Path, role_refs: list[tuple[str, Value]]) -> AuthConfig:
    default = AuthConfig()
    sec = top.subsection("auth")
    if sec is None:
        return default

    def algorithm(v: Value) -> str:
        text = v.text()
        if text not in ALGORITHMS:
            raise Invalid(f"{v.key}: {text!r} is not one of {', '.join(ALGORITHMS)}")
        return text

    def duration(v: Value) -> float:
        return v.convert(parse_duration)

    default_role = sec.field("default_role", _role, None)
    default_role_value = sec.get("default_role")
    if default_role is not None and default_role_value is not None:
        role_refs.append((default_role, default_role_value))
    auth = AuthConfig(
        issuer=sec.field("issuer", Value.text, default.issuer),
        algorithm=sec.field("algorithm", algorithm, default.algorithm),
        access_ttl=sec.field("access_ttl", duration, default.access_ttl),
        refresh_ttl=sec.field("refresh_ttl", duration, default.refresh_ttl),
        allow_registration=sec.field("allow_registration", Value.boolean, False),
        default_role=default_role or default.default_role,
        audience=sec.field("audience", Value.text, None),
        leeway=sec.field("leeway", duration, default.leeway),
        keys=sec.field("keys", lambda v: _keys(v, top.problems, base_dir), ()),
        password_min_length=sec.field(
            "password_min_length", lambda v: v.integer(minimum=8), default.password_min_length
        ),
        login_failures=sec.field(
            "login_failures", lambda v: v.convert(parse_rate), default.login_failures
        ),
        token_cache=sec.field("token_cache", lambda v: v.integer(minimum=0), default.token_cache),
        hashing=sec.field("password_hashing", lambda v: _hashing(v, top.problems), default.hashing),
        refresh_cookie=sec.field("refresh_cookie", Value.boolean, default.refresh_cookie),
    )
    sec.check_unknown(
        "issuer, algorithm, access_ttl, refresh_ttl, allow_registration, default_role, "
        "audience, leeway, keys, password_min_length, login_failures, token_cache, "
        "password_hashing, refresh_cookie"
    )
    hmac = auth.algorithm.startswith("HS")
    for key in auth.keys:
        if hmac and key.secret is None:
            top.problems.add(
                sec.file,
                key.line,
                f"auth.keys: {key.kid}: {auth.algorithm} "
                "keys need a secret (e.g. secret: ${GATEWAY_JWT_SECRET})",
            )
        if not hmac and key.secret is not None:
            top.problems.add(
                sec.file,
                key.line,
                f"auth.keys: {key.kid}: {auth.algorithm} "
                "keys are PEM files (private_key, public_key), not secrets",
            )
    if not hmac and not auth.keys:
        top.problems.add(
            sec.file, sec.line, f"auth: {auth.algorithm} needs auth.keys with PEM key files"
        )
    return auth


def _keys(value: Value, problems: Problems, base_dir: Path) -> tuple[KeyConfig, ...]:
    keys: list[KeyConfig] = []
    for item in value.items():
        sec = item.section(problems)
        kid = sec.field("kid", Value.text, None)
        secret = sec.field("secret", Value.text, None)
        private = sec.field("private_key", lambda v: base_dir / v.text(), None)
        public = sec.field("public_key", lambda v: base_dir / v.text(), None)
        sec.check_unknown("kid, secret, private_key, public_key")
        if kid is None:
            raise Invalid(f"{item.key}: needs a kid (key id)", item.line)
        if kid in {k.kid for k in keys}:
            raise Invalid(f"{item.key}.kid: {kid!r} is used twice", item.line)
        if secret is None and private is None and public is None:
            raise Invalid(f"{item.key}: give a secret, or private_key/public_key files", item.line)
        keys.append(
            KeyConfig(
                kid=kid,
                secret=secret.encode("utf-8") if secret is not None else None,
                private_key=private,
                public_key=public,
                line=item.line,
            )
        )
    return tuple(keys)


def parse_target(value: Value, weight: int = 1) -> UpstreamTarget:
    text = value.text()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise Invalid(f"{value.key}: {text!r} must be an http:// or https:// URL", value.line)
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise Invalid(f"{value.key}: {text!r} has an invalid port", value.line)
    if not parts.hostname:
        raise Invalid(f"{value.key}: {text!r} has no host", value.line)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise Invalid(
            f"{value.key}: {text!r} may not carry a query, fragment or credentials", value.line
        )
    return UpstreamTarget(
        url=text,
        scheme=parts.scheme,
        host=parts.hostname,
        port=port or (443 if parts.scheme == "https" else 80),
        base_path=parts.path.rstrip("/"),
        weight=weight,
    )


def _targets(value: Value, problems: Problems) -> tuple[UpstreamTarget, ...]:
    """`[URL, {url: URL, weight: N}, ...]`: each item a URL, or a URL with its weight."""
    targets: list[UpstreamTarget] = []
    for item in value.items():
        if item.is_mapping():
            sec = item.section(problems)
            url = sec.get("url")
            weight = sec.field("weight", _weight, 1)
            sec.check_unknown("url, weight")
            if url is None:
                raise Invalid(f"{item.key}: needs a url", item.line)
            target = parse_target(url, weight)
        else:
            target = parse_target(item)
        if any(t.url == target.url for t in targets):
            raise Invalid(f"{item.key}: {target.url!r} is listed twice", item.line)
        targets.append(target)
    if not targets:
        raise Invalid(f"{value.key}: needs at least one target URL")
    return tuple(targets)


def _weight(value: Value) -> int:
    weight = value.integer(minimum=1)
    if weight > MAX_WEIGHT:
        raise Invalid(f"{value.key}: must be at most {MAX_WEIGHT}", value.line)
    return weight


def _balance(value: Value) -> Balance:
    text = value.text()
    for mode in BALANCE_MODES:
        if text == mode:
            return mode
    raise Invalid(f"{value.key}: must be one of {', '.join(BALANCE_MODES)}, not {text!r}")


def _positive_duration(value: Value) -> float:
    return value.convert(parse_positive_duration)


def _health_check(value: Value, problems: Problems) -> HealthCheckConfig:
    sec = value.section(problems)
    default = HealthCheckConfig()

    def path(v: Value) -> str:
        text = v.text()
        if not text.startswith("/"):
            raise Invalid(f"{v.key}: must start with /, got {text!r}", v.line)
        return text

    check = HealthCheckConfig(
        path=sec.field("path", path, default.path),
        interval=sec.field("interval", _positive_duration, default.interval),
        timeout=sec.field("timeout", _positive_duration, default.timeout),
        healthy=sec.field("healthy", lambda v: v.integer(minimum=1), default.healthy),
        unhealthy=sec.field("unhealthy", lambda v: v.integer(minimum=1), default.unhealthy),
    )
    sec.check_unknown("path, interval, timeout, healthy, unhealthy")
    return check


def _passive(value: Value, problems: Problems) -> PassiveConfig:
    sec = value.section(problems)
    default = DEFAULT_PASSIVE
    passive = PassiveConfig(
        failures=sec.field("failures", lambda v: v.integer(minimum=1), default.failures),
        backoff=sec.field("backoff", _positive_duration, default.backoff),
        max_backoff=sec.field("max_backoff", _positive_duration, default.max_backoff),
    )
    sec.check_unknown("failures, backoff, max_backoff")
    if passive.max_backoff < passive.backoff:
        sec.report(
            sec.get("max_backoff") or value,
            f"{value.key}.max_backoff: {format_duration(passive.max_backoff)} is shorter than "
            f"{value.key}.backoff ({format_duration(passive.backoff)})",
        )
    return passive


def _ratio(value: Value) -> float:
    """`20%` or a fraction `0.2`, between 0 and 1."""
    raw = value.scalar()
    try:
        if isinstance(raw, bool) or raw is None:
            raise ValueError
        text = str(raw).strip()  # after ${ENV} expansion numbers arrive as text
        ratio = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise Invalid(
            f"{value.key}: expected a percentage like 20% (or a fraction like 0.2)", value.line
        ) from None
    if not 0 <= ratio <= 1:
        raise Invalid(f"{value.key}: must be between 0% and 100%", value.line)
    return ratio


def _retry_budget(value: Value, problems: Problems) -> RetryBudgetConfig:
    default = DEFAULT_RETRY_BUDGET
    if not value.is_mapping():
        return RetryBudgetConfig(ratio=_ratio(value), min_per_second=default.min_per_second)
    sec = value.section(problems)
    budget = RetryBudgetConfig(
        ratio=sec.field("ratio", _ratio, default.ratio),
        min_per_second=sec.field(
            "min_per_second", lambda v: v.integer(minimum=0), default.min_per_second
        ),
    )
    sec.check_unknown("ratio, min_per_second")
    return budget


def _retries(value: Value) -> int:
    retries = value.integer(minimum=0)
    if retries > MAX_RETRIES:
        raise Invalid(f"{value.key}: must be at most {MAX_RETRIES}", value.line)
    return retries


def _upstream_fields(
    name: str, sec: Section, targets: tuple[UpstreamTarget, ...], line: int, timeout: float
) -> UpstreamConfig:
    def duration(v: Value) -> float:
        return v.convert(parse_duration)

    defaults = UpstreamConfig(name=name, targets=targets)
    return UpstreamConfig(
        name=name,
        targets=targets,
        timeout=sec.field("timeout", duration, timeout),
        connect_timeout=sec.field(
            "connect_timeout",
            duration,
            MODEL_CONNECT_TIMEOUT if timeout == MODEL_TIMEOUT else defaults.connect_timeout,
        ),
        first_byte_timeout=sec.field("first_byte_timeout", duration, None),
        max_connections=sec.field(
            "max_connections", lambda v: v.integer(minimum=1), defaults.max_connections
        ),
        max_pending=sec.field("max_pending", lambda v: v.integer(minimum=0), defaults.max_pending),
        forward_authorization=sec.field("forward_authorization", Value.boolean, False),
        pass_host=sec.field("pass_host", Value.boolean, False),
        balance=sec.field("balance", _balance, defaults.balance),
        health_check=sec.field("health_check", lambda v: _health_check(v, sec.problems), None),
        passive=sec.field("passive", lambda v: _passive(v, sec.problems), defaults.passive),
        retries=sec.field("retries", _retries, defaults.retries),
        retry_budget=sec.field(
            "retry_budget", lambda v: _retry_budget(v, sec.problems), defaults.retry_budget
        ),
        tls=sec.field("tls", lambda v: _upstream_tls(v, sec.problems, targets), None),
        line=line,
    )


def _upstream(name: str, value: Value, problems: Problems, top: Section) -> UpstreamConfig | None:
    if not _NAME.match(name):
        top.report(value, f"{value.key}: upstream names use letters, digits, _ . -")
        return None
    try:
        sec = value.section(problems)
    except Invalid as exc:
        top.report(value, str(exc))
        return None
    targets_value = sec.get("targets")
    if targets_value is None:
        sec.report(value, f"{value.key}: needs targets: [URL, ...]")
        targets: tuple[UpstreamTarget, ...] = ()
    else:
        targets = sec.field("targets", lambda v: _targets(v, problems), ())
    upstream = _upstream_fields(name, sec, targets, value.line, UPSTREAM_TIMEOUT)
    sec.check_unknown(", ".join(_UPSTREAM_KEYS))
    return upstream if targets else None


def _methods(value: Value) -> frozenset[str] | None:
    methods: set[str] = set()
    for item in value.items():
        text = item.text().upper()
        if not _METHOD.match(text):
            raise Invalid(f"{item.key}: {text!r} is not an HTTP method", item.line)
        methods.add(text)
    if not methods:
        raise Invalid(f"{value.key}: list at least one method, or leave methods out for all")
    if "GET" in methods:
        methods.add("HEAD")  # a GET route answers HEAD, as HTTP expects
    return frozenset(methods)


def _hashing(value: Value, problems: Problems) -> HashingConfig:
    sec = value.section(problems)
    default = HashingConfig()
    hashing = HashingConfig(
        time_cost=sec.field("time_cost", lambda v: v.integer(minimum=1), default.time_cost),
        memory_cost=sec.field("memory_cost", lambda v: v.convert(parse_size), default.memory_cost),
        parallelism=sec.field("parallelism", lambda v: v.integer(minimum=1), default.parallelism),
        workers=sec.field("workers", lambda v: v.integer(minimum=1), default.workers),
        queue=sec.field("queue", lambda v: v.integer(minimum=0), default.queue),
    )
    sec.check_unknown("time_cost, memory_cost, parallelism, workers, queue")
    if hashing.memory_cost < 8 * 1024 * hashing.parallelism:
        raise Invalid(f"{value.key}.memory_cost: argon2 needs at least 8KiB per lane", value.line)
    return hashing


def _auth_mode(value: Value) -> str:
    text = value.text()
    if text not in ("none", "required"):
        raise Invalid(f"{value.key}: must be none or required, not {text!r}")
    return text


def _names(value: Value) -> tuple[str, ...]:
    return tuple(item.text() for item in value.items())


def _role(value: Value) -> str:
    role = value.text()
    if not _NAME.match(role):
        raise Invalid(f"{value.key}: {role!r} is not a role name", value.line)
    return role


def _roles(value: Value) -> tuple[str, ...]:
    return tuple(_role(item) for item in value.items())


def rate_limit(
    value: Value, problems: Problems, default_key: str = "user"
) -> RateLimitConfig | None:
    """`60/min`, {limit: 5, per: 1m, key: ip}, or `off` / `none` for no limit.

    None for `off`, and when a part was already reported.
    """
    if not value.is_mapping():
        if _is_off(value):
            return None
        return RateLimitConfig(rate=value.convert(parse_rate), key=default_key)
    sec = value.section(problems)
    limit = sec.field("limit", lambda v: v.integer(minimum=1), None)
    per = sec.field("per", lambda v: v.convert(parse_duration), None)
    key = sec.field("key", _limit_key, default_key)
    sec.check_unknown("limit, per, key")
    if sec.get("limit") is None or sec.get("per") is None:
        raise Invalid(f"{value.key}: needs limit (a number) and per (a duration)")
    if per == 0:
        sec.report(sec.get("per"), f"{value.key}.per: must be longer than zero")
        return None
    if limit is None or per is None:
        return None  # the bad limit or per is reported already
    return RateLimitConfig(rate=Rate(limit, per), key=key)


def _is_off(value: Value) -> bool:
    """`off` or `none` (PyYAML reads a bare `off`, like `no` and `false`, as false)."""
    scalar = value.scalar()
    if scalar is True:
        raise Invalid(f"{value.key}: give a rate like 60/min, or off for no limit", value.line)
    return scalar is False or (isinstance(scalar, str) and scalar.strip().lower() in _OFF)


def _limit_key(value: Value) -> str:
    text = value.text()
    if text in ("user", "ip", "route"):
        return text
    if text.startswith("header:") and _HEADER.match(text[7:]):
        return "header:" + text[7:].lower()
    raise Invalid(f"{value.key}: must be user, ip, route or header:NAME, not {text!r}")


def _route_common(
    sec: Section, problems: Problems, role_refs: list[tuple[str, Value]]
) -> dict[str, object]:
    methods = sec.field("methods", _methods, None)
    auth = sec.field("auth", _auth_mode, "required")
    roles = sec.field("roles", _roles, _NO_NAMES)
    roles_value = sec.get("roles")
    if roles_value is not None:
        role_refs.extend((role, roles_value) for role in dict.fromkeys(roles))
    return {
        "methods": methods,
        "auth": auth,
        "roles": roles,
        "rate_limit": sec.field("rate_limit", lambda v: rate_limit(v, problems), None),
        "retry_after_send": sec.field("retry_after_send", Value.boolean, False),
    }


def _route(
    index: int,
    value: Value,
    problems: Problems,
    handlers: frozenset[str],
    upstream_refs: list[tuple[str, Value]],
    role_refs: list[tuple[str, Value]],
) -> Route | None:
    try:
        sec = value.section(problems)
    except Invalid as exc:
        problems.add(value.file, value.line, str(exc))
        return None
    path = sec.field("path", lambda v: v.convert_text(compile_pattern), None)
    handler = sec.field("handler", Value.text, None)
    upstream = sec.field("upstream", Value.text, None)
    strip = sec.field("strip_prefix", lambda v: v.convert_text(_strip_prefix), None)
    common = _route_common(sec, problems, role_refs)
    sec.check_unknown(
        "path, methods, handler, upstream, strip_prefix, auth, roles, rate_limit, retry_after_send"
    )
    where = f"{value.key}"
    ok = True
    if sec.get("path") is None:  # absent or empty
        sec.report(value, f"{where}: needs a path")
        ok = False
    upstream_value = sec.get("upstream")
    if upstream is not None and upstream_value is not None:
        upstream_refs.append((upstream, upstream_value))
    if (handler is None) == (upstream is None):
        sec.report(value, f"{where}: give exactly one of handler or upstream")
        ok = False
    if handler is not None and handler not in handlers:
        known = ", ".join(sorted(handlers)) or "none yet"
        sec.report(sec.get("handler"), f"{where}.handler: unknown handler {handler!r} ({known})")
        ok = False
    if strip is not None and handler is not None:
        sec.report(sec.get("strip_prefix"), f"{where}.strip_prefix: only applies to upstreams")
        ok = False
    if common["retry_after_send"] and handler is not None:
        sec.report(
            sec.get("retry_after_send"), f"{where}.retry_after_send: only applies to upstreams"
        )
        ok = False
    if strip is not None and path is not None and not _is_segment_prefix(strip, path):
        sec.report(
            sec.get("strip_prefix"),
            f"{where}.strip_prefix: {strip!r} is not a prefix of the path {path!r}",
        )
        ok = False
    if not ok or path is None:
        return None
    return Route(
        index=index,
        path=path,
        handler=handler,
        upstream=upstream,
        strip_prefix=strip,
        source=f"{value.file}:{value.line}",
        **common,  # type: ignore[arg-type]
    )


def _strip_prefix(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError("must start with /")
    return text.rstrip("/") or "/"


def _is_segment_prefix(prefix: str, pattern: str) -> bool:
    static = literal_prefix(pattern)
    return prefix == "/" or static == prefix or static.startswith(prefix + "/")


def _model(
    name: str,
    value: Value,
    problems: Problems,
    top: Section,
    upstreams: dict[str, UpstreamConfig],
    models: dict[str, ModelConfig],
    routes: list[Route],
    fallback_refs: list[tuple[str, Value]],
    role_refs: list[tuple[str, Value]],
) -> None:
    if not _NAME.match(name):
        top.report(value, f"{value.key}: model names use letters, digits, _ . -")
        return
    if name in upstreams:
        top.report(value, f"{value.key}: {name!r} is already an upstream name")
        return
    try:
        sec = value.section(problems)
    except Invalid as exc:
        top.report(value, str(exc))
        return
    url = sec.get("url")
    targets_value = sec.get("targets")
    targets: tuple[UpstreamTarget, ...] = ()
    if (url is None) == (targets_value is None):
        sec.report(value, f"{value.key}: give exactly one of url or targets")
    elif url is not None:
        targets = sec.field("url", lambda v: (parse_target(v),), ())
    else:
        targets = sec.field("targets", lambda v: _targets(v, problems), ())
    upstream = _upstream_fields(name, sec, targets, value.line, MODEL_TIMEOUT)
    common = _route_common(sec, problems, role_refs)
    if sec.get("rate_limit") is None:  # absent: the default; `off` gave None on purpose
        common["rate_limit"] = MODEL_RATE_LIMIT
    usage = sec.field("usage", _usage_format, None)
    token_limit = sec.field("token_limit", lambda v: rate_limit(v, problems), None)
    fallback = sec.field("fallback", _names, _NO_NAMES)
    fallback_value = sec.get("fallback")
    if fallback_value is not None and fallback:
        for other, item in zip(fallback, fallback_value.items(), strict=True):
            if other == name:
                sec.report(item, f"{item.key}: a model cannot fall back to itself")
            else:
                fallback_refs.append((other, item))
    max_attempts = sec.field("max_attempts", _max_attempts, 0)
    fallback_budget = sec.field("fallback_budget", _positive_duration, None)
    sec.check_unknown(", ".join(("url", *_UPSTREAM_KEYS, *_ROUTE_KEYS, *_MODEL_KEYS)))
    if not targets:
        return
    upstreams[name] = upstream
    models[name] = ModelConfig(
        name=name,
        usage=usage,
        token_limit=token_limit,
        fallback=fallback,
        max_attempts=max_attempts,
        fallback_budget=fallback_budget,
        line=value.line,
    )
    routes.append(
        Route(
            index=len(routes),
            path=f"/models/{name}/**",
            upstream=name,
            strip_prefix=f"/models/{name}",
            model=name,
            source=f"{value.file}:{value.line}",
            **common,  # type: ignore[arg-type]
        )
    )


USAGE_FORMATS = ("openai",)
_MODEL_KEYS = ("usage", "token_limit", "fallback", "max_attempts", "fallback_budget")


def _max_attempts(value: Value) -> int:
    attempts = value.integer(minimum=1)
    if attempts > MAX_ATTEMPTS:
        raise Invalid(f"{value.key}: must be at most {MAX_ATTEMPTS}", value.line)
    return attempts


def _usage_format(value: Value) -> str:
    text = value.text()
    if text not in USAGE_FORMATS:
        raise Invalid(f"{value.key}: unknown usage format {text!r} ({', '.join(USAGE_FORMATS)})")
    return text


def _cross_check(routes: list[Route], problems: Problems, file: str) -> None:
    seen: dict[str, Route] = {}
    for route in routes:
        line = int(route.source.rsplit(":", 1)[1])
        # /a/{x} and /a/{y} match the same paths: the parameter name does not count.
        shape = _PARAM_NAME.sub("{}", route.path)
        previous = seen.get(shape)
        if previous is not None:
            problems.add(
                file,
                line,
                f"route path {route.path} is already used by the route at {previous.source}",
            )
        seen.setdefault(shape, route)


def _check_references(
    upstream_refs: list[tuple[str, Value]],
    fallback_refs: list[tuple[str, Value]],
    upstreams: dict[str, UpstreamConfig],
    declared: set[str],
    models: dict[str, ModelConfig],
    problems: Problems,
) -> None:
    known = ", ".join(sorted(upstreams)) or "none defined"
    for name, value in upstream_refs:
        if name not in upstreams and name not in declared:  # declared: its fault is reported
            problems.add(
                value.file,
                value.line,
                f"{value.key}: undefined upstream {name!r} (upstreams: {known})",
            )
    for name, value in fallback_refs:
        if name not in models:
            problems.add(value.file, value.line, f"{value.key}: {name!r} is not a model")


def _policy(
    directory: Path,
    policies_value: Value | None,
    role_refs: list[tuple[str, Value]],
    problems: Problems,
) -> Policy:
    """Load policies/ and report each role named in routes.yaml that it does not define."""
    if not directory.is_dir():
        if not role_refs:
            return Policy()  # nothing names a role: no policy needed
        if policies_value is not None:
            where, key = policies_value, "policies"
        else:
            where, key = role_refs[0][1], role_refs[0][1].key
        problems.add(where.file, where.line, f"{key}: policies folder not found: {directory}")
        return Policy()
    policy = load_policies(directory, problems)
    known = ", ".join(sorted(policy.roles)) or "none defined"
    for role, value in role_refs:
        if role not in policy.roles:
            problems.add(
                value.file, value.line, f"{value.key}: unknown role {role!r} (roles: {known})"
            )
    return policy
