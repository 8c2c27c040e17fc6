"""routes.yaml's auth section (tokens, signing keys, password hashing) → `AuthConfig`.

Also the role-name parser every section that names a role uses; whether each
role is defined is checked against policies/ once everything is read.
"""

from __future__ import annotations

from pathlib import Path

from gateway.config.bounded import read_duration, read_whole
from gateway.config.policies import ROLE_NAME
from gateway.config.schema.auth import AuthConfig, HashingConfig, KeyConfig
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
    )
    sec.check_unknown(
        "issuer, algorithm, access_ttl, refresh_ttl, allow_registration, default_role, "
        "audience, leeway, keys, password_min_length, login_failures, token_cache, "
        "password_hashing, refresh_cookie"
    )
    _check_key_kinds(auth, sec)
    return auth


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
