"""routes.yaml's auth section (tokens, signing keys, password hashing, outside issuers) →
`AuthConfig`.

Also the role-name parser every section that names a role uses; whether each
role is defined is checked against policies/ once everything is read.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from gateway.config.bounded import read_duration, read_whole
from gateway.config.policies import ROLE_NAME
from gateway.config.schema.auth import (
    DEFAULT_OUTSIDE_ALGORITHMS,
    OUTSIDE_ALGORITHMS,
    AuthConfig,
    HashingConfig,
    IssuerConfig,
    KeyConfig,
)
from gateway.config.schema.fields import key_doc
from gateway.config.units import parse_rate, parse_size
from gateway.config.yamlsource import Invalid, Problems, Section, Value


def parse_auth(top: Section, base_dir: Path, role_refs: list[tuple[str, Value]]) -> AuthConfig:
    """The `auth:` section; its default_role is added to `role_refs`, checked later."""
    default = AuthConfig()
    sec = top.subsection("auth")
    if sec is None:
        return default

    def algorithm(v: Value) -> str:
        text = v.text()
        algorithms = key_doc(AuthConfig, "algorithm").choices
        if text not in algorithms:
            raise Invalid(f"{v.key}: {text!r} is not one of {', '.join(algorithms)}")
        return text

    default_role = sec.field("default_role", parse_role, None)
    default_role_value = sec.get("default_role")
    if default_role is not None and default_role_value is not None:
        role_refs.append((default_role, default_role_value))
    auth = AuthConfig(
        issuer=sec.field("issuer", Value.text, default.issuer),
        algorithm=sec.field("algorithm", algorithm, default.algorithm),
        access_ttl=read_duration(sec, default, "access_ttl"),
        refresh_ttl=read_duration(sec, default, "refresh_ttl"),
        allow_registration=sec.field("allow_registration", Value.boolean, False),
        default_role=default_role or default.default_role,
        audience=sec.field("audience", Value.text, None),
        leeway=read_duration(sec, default, "leeway"),
        keys=sec.field("keys", lambda v: _keys(v, top.problems, base_dir), ()),
        password_min_length=read_whole(sec, default, "password_min_length"),
        login_failures=sec.field(
            "login_failures", lambda v: v.convert(parse_rate), default.login_failures
        ),
        token_cache=read_whole(sec, default, "token_cache"),
        hashing=sec.field("password_hashing", lambda v: _hashing(v, top.problems), default.hashing),
        refresh_cookie=sec.field("refresh_cookie", Value.boolean, default.refresh_cookie),
        issuers=sec.field("issuers", lambda v: _issuers(v, top.problems, role_refs), ()),
    )
    sec.check_unknown(
        "issuer, algorithm, access_ttl, refresh_ttl, allow_registration, default_role, "
        "audience, leeway, keys, password_min_length, login_failures, token_cache, "
        "password_hashing, refresh_cookie, issuers"
    )
    _check_key_kinds(auth, sec)
    for entry in auth.issuers:
        if entry.issuer == auth.issuer:
            sec.problems.add(
                sec.file,
                entry.line,
                f"auth.issuers: {entry.issuer!r} is auth.issuer, the gateway's own tokens' iss",
            )
    return auth


ISSUER_KEYS = "issuer, jwks_url, audience, algorithms, role_claim, roles, default_role"


def _issuers(
    value: Value, problems: Problems, role_refs: list[tuple[str, Value]]
) -> tuple[IssuerConfig, ...]:
    """`auth.issuers`: each entry's problems are reported, and a faulty entry left out."""
    entries: list[IssuerConfig] = []
    for item in value.items():
        try:
            sec = item.section(problems)
        except Invalid as exc:
            problems.add(item.file, item.line, str(exc))
            continue
        before = len(problems.items)
        issuer = sec.field("issuer", Value.text, None)
        jwks_url = sec.field("jwks_url", _jwks_url, None)
        audience = sec.field("audience", Value.text, None)
        algorithms = sec.field("algorithms", _algorithms, None)
        no_paths: tuple[str, ...] = ()
        no_roles: tuple[tuple[str, str], ...] = ()
        role_claim = sec.field("role_claim", _claim_paths, no_paths)
        roles = sec.field("roles", lambda v: _role_map(v, problems, role_refs), no_roles)
        default_role = sec.field("default_role", parse_role, None)
        default_value = sec.get("default_role")
        if default_role is not None and default_value is not None:
            role_refs.append((default_role, default_value))
        sec.check_unknown(ISSUER_KEYS)
        for name, found in (("issuer", issuer), ("jwks_url", jwks_url), ("audience", audience)):
            if found is None and name not in sec:
                problems.add(item.file, item.line, f"{item.key}: needs {name}")
        if issuer is not None and issuer in {e.issuer for e in entries}:
            problems.add(item.file, item.line, f"{item.key}.issuer: {issuer!r} is listed twice")
        if len(problems.items) > before or issuer is None or jwks_url is None or audience is None:
            continue
        entries.append(
            IssuerConfig(
                issuer=issuer,
                jwks_url=jwks_url,
                audience=audience,
                algorithms=algorithms or DEFAULT_OUTSIDE_ALGORITHMS,
                role_claim=role_claim,
                roles=roles,
                default_role=default_role,
                line=item.line,
            )
        )
    return tuple(entries)


def _jwks_url(value: Value) -> str:
    """https://, or http:// to a loopback host only: keys fetched in the clear from anywhere
    else could be swapped on the way (RFC 8725 §3.1: the keys decide what is trusted)."""
    url = value.text()
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise Invalid(f"{value.key}: {url!r} is not a URL ({exc})", value.line) from None
    if parts.scheme not in ("https", "http") or not host:
        raise Invalid(f"{value.key}: {url!r} is not an https:// URL", value.line)
    if parts.scheme == "http" and not is_loopback(host):
        raise Invalid(
            f"{value.key}: http:// is accepted for loopback hosts only; use https:// for {host}",
            value.line,
        )
    return url


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _algorithms(value: Value) -> tuple[str, ...]:
    found: list[str] = []
    for item in value.items():
        name = item.text()
        if name.upper().startswith("HS") or name.lower() == "none":
            raise Invalid(
                f"{item.key}: {name} is refused: an outside issuer's tokens must be signed "
                "with a public key (RFC 8725 §3.1)",
                item.line,
            )
        if name not in OUTSIDE_ALGORITHMS:
            raise Invalid(
                f"{item.key}: {name!r} is not one of {', '.join(OUTSIDE_ALGORITHMS)}", item.line
            )
        if name not in found:
            found.append(name)
    if not found:
        raise Invalid(f"{value.key}: name at least one algorithm", value.line)
    return tuple(found)


def _claim_paths(value: Value) -> tuple[str, ...]:
    """One dotted path, or a list of them."""
    if value.is_mapping():
        raise Invalid(f"{value.key}: expected a claim path or a list of them", value.line)
    try:
        items = value.items()
    except Invalid:
        items = [value]
    paths = tuple(item.text() for item in items)
    for path in paths:
        if any(part == "" for part in path.split(".")):
            raise Invalid(f"{value.key}: {path!r} is not a dotted claim path", value.line)
    return paths


def _role_map(
    value: Value, problems: Problems, role_refs: list[tuple[str, Value]]
) -> tuple[tuple[str, str], ...]:
    """Their role name → ours, in the order written (the first the token has applies)."""
    sec = value.section(problems)
    pairs: list[tuple[str, str]] = []
    for name, item in sec:
        try:
            ours = parse_role(item)
        except Invalid as exc:
            problems.add(item.file, item.line, str(exc))
            continue
        role_refs.append((ours, item))
        pairs.append((name, ours))
    return tuple(pairs)


def _check_key_kinds(auth: AuthConfig, sec: Section) -> None:
    """HS256 keys are secrets, the others PEM files; RS256 and the like need a key."""
    hmac = auth.algorithm.startswith("HS")
    for key in auth.keys:
        if hmac and key.secret is None:
            sec.problems.add(
                sec.file,
                key.line,
                f"auth.keys: {key.kid}: {auth.algorithm} "
                "keys need a secret (e.g. secret: ${GATEWAY_JWT_SECRET})",
            )
        if not hmac and key.secret is not None:
            sec.problems.add(
                sec.file,
                key.line,
                f"auth.keys: {key.kid}: {auth.algorithm} "
                "keys are PEM files (private_key, public_key), not secrets",
            )
    if not hmac and not auth.keys:
        sec.problems.add(
            sec.file, sec.line, f"auth: {auth.algorithm} needs auth.keys with PEM key files"
        )


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


def _hashing(value: Value, problems: Problems) -> HashingConfig:
    sec = value.section(problems)
    default = HashingConfig()
    hashing = HashingConfig(
        time_cost=read_whole(sec, default, "time_cost"),
        memory_cost=sec.field("memory_cost", lambda v: v.convert(parse_size), default.memory_cost),
        parallelism=read_whole(sec, default, "parallelism"),
        workers=read_whole(sec, default, "workers"),
        queue=read_whole(sec, default, "queue"),
    )
    sec.check_unknown("time_cost, memory_cost, parallelism, workers, queue")
    if hashing.memory_cost < 8 * 1024 * hashing.parallelism:
        raise Invalid(f"{value.key}.memory_cost: argon2 needs at least 8KiB per lane", value.line)
    return hashing


def parse_role(value: Value) -> str:
    """A role name (letters, digits, _ . -, as policies/ writes them)."""
    role = value.text()
    if not ROLE_NAME.match(role):
        raise Invalid(f"{value.key}: {role!r} is not a role name", value.line)
    return role


def parse_roles(value: Value) -> tuple[str, ...]:
    return tuple(parse_role(item) for item in value.items())
