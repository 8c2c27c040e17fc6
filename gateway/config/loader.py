"""routes.yaml → a validated, frozen `Config`, or a `ConfigError` listing every problem.

Parse strictly (unknown keys are errors), check every cross-reference, and
only then build; `gateway check`, `gateway serve` and reloads all come here.
Each section has its parser module; this one reads the file, calls them in
order and checks what one section names in another.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from pathlib import Path
from types import MappingProxyType

from gateway.config.auth_section import parse_auth
from gateway.config.models_section import parse_model
from gateway.config.policies import Policy, load_policies
from gateway.config.routes_section import check_route_paths, parse_route
from gateway.config.schema.models import ModelConfig
from gateway.config.schema.routes import Route
from gateway.config.schema.top import Config
from gateway.config.schema.upstreams import UpstreamConfig
from gateway.config.server_section import parse_audit, parse_database, parse_server
from gateway.config.upstreams_section import parse_upstream
from gateway.config.yamlsource import Invalid, Problems, Value, missing_space_hint, read_yaml

# The local handlers a route may name. Kept beside the schema so `gateway
# check` needs no aiohttp; tests pin it to the handler registry.
KNOWN_HANDLERS: frozenset[str] = frozenset(
    {"auth.register", "auth.login", "auth.refresh", "auth.logout", "users", "admin"}
)


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
        hint = missing_space_hint(root.node)
        problems.add(str(config_path), 1, f"routes.yaml must be a mapping of sections{hint}")
        problems.raise_if_any()
        raise
    base_dir = config_path.parent

    # every role named in routes.yaml, with where: checked against policies/ at the end
    role_refs: list[tuple[str, Value]] = []
    server = parse_server(top, base_dir)
    auth = parse_auth(top, base_dir, role_refs)
    policies_dir = top.field("policies", lambda v: base_dir / v.text(), base_dir / "policies")
    upstreams: dict[str, UpstreamConfig] = {}
    declared: set[str] = set()  # every upstream written, valid or not
    upstreams_value = top.get("upstreams")
    if upstreams_value is not None:
        try:
            for name, value in upstreams_value.section(problems):
                declared.add(name)
                upstream = parse_upstream(name, value, problems, top)
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
                route = parse_route(
                    len(routes), item, problems, known_handlers, upstream_refs, role_refs, base_dir
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
                parse_model(
                    name, value, problems, top, upstreams, models, routes, fallback_refs, role_refs
                )
        except Invalid as exc:
            top.report(models_value, str(exc))

    routes = static_last(routes)
    audit = parse_audit(top, base_dir)
    database = parse_database(top)
    top.check_unknown("server, auth, policies, upstreams, models, routes, audit, database")
    check_route_paths(routes, problems, str(config_path))
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


def static_last(routes: list[Route]) -> list[Route]:
    """The routes in first-match order: static routes after every other one (models' too),
    so a frontend served at /** never hides an API path (README "How a path is matched")."""
    ordered = [r for r in routes if r.static is None] + [r for r in routes if r.static is not None]
    return [r if r.index == i else dataclasses.replace(r, index=i) for i, r in enumerate(ordered)]


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
