"""What a config change would change: routes, their order, upstreams and roles.

`gateway routes --diff OLD NEW` prints one line per difference: `+` added,
`-` removed, `~` changed (with old -> new). Routes are matched by methods
and path; a route that keeps its place among the others but changes its
target, auth, roles, rate limit or prefix stripping is one `~` line. Since
the first matching route wins, a change in the order of the routes both
files have is reported too. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway.config.schema.routes import Route
from gateway.config.schema.top import Config
from gateway.config.schema.upstreams import UpstreamConfig
from gateway.config.units import format_duration

RouteKey = tuple[str, str]  # (methods, path)


def _methods(route: Route) -> str:
    return ",".join(sorted(route.methods)) if route.methods else "*"


def _key(route: Route) -> RouteKey:
    return _methods(route), route.path


def _route_fields(route: Route) -> dict[str, str]:
    limit = route.rate_limit
    return {
        "target": route.target,
        "auth": route.auth,
        "roles": ",".join(route.roles) or ("-" if route.auth == "none" else "any"),
        "rate limit": f"{limit.rate} by {limit.key}" if limit else "off",
        "strip_prefix": route.strip_prefix or "-",
        "retry_after_send": "yes" if route.retry_after_send else "no",
    }


def _upstream_fields(upstream: UpstreamConfig) -> dict[str, str]:
    return {
        "targets": ", ".join(f"{t.url} (weight {t.weight})" for t in upstream.targets),
        "timeout": format_duration(upstream.timeout),
        "connect_timeout": format_duration(upstream.connect_timeout),
        "first_byte_timeout": format_duration(upstream.first_byte_timeout)
        if upstream.first_byte_timeout
        else "-",
        "balance": upstream.balance,
        "retries": str(upstream.retries),
        "max_pending": str(upstream.max_pending),
        "health_check": "on" if upstream.health_check else "off",
        "tls": "custom" if upstream.tls else "default",
    }


def _changes(old: Mapping[str, str], new: Mapping[str, str]) -> str:
    return "; ".join(f"{name} {old[name]} -> {new[name]}" for name in old if old[name] != new[name])


def diff(old: Config, new: Config) -> list[str]:
    """The differences between two loaded configs, one line each (empty: none)."""
    lines: list[str] = []
    lines += _diff_routes(old.routes, new.routes)
    lines += _diff_named(
        "upstream", old.upstreams, new.upstreams, _upstream_fields, _describe_upstream
    )
    old_roles = {r: ",".join(chain[1:]) or "-" for r, chain in _chains(old).items()}
    new_roles = {r: ",".join(chain[1:]) or "-" for r, chain in _chains(new).items()}
    for role in sorted(set(old_roles) | set(new_roles)):
        if role not in new_roles:
            lines.append(f"- role {role}")
        elif role not in old_roles:
            lines.append(f"+ role {role} (inherits {new_roles[role]})")
        elif old_roles[role] != new_roles[role]:
            lines.append(f"~ role {role}: inherits {old_roles[role]} -> {new_roles[role]}")
    return lines


def _chains(config: Config) -> dict[str, tuple[str, ...]]:
    return {role: tuple(chain) for role, chain in config.policy.roles.items()}


def _describe_route(route: Route) -> str:
    fields = _route_fields(route)
    return (
        f"{_methods(route)} {route.path} -> {fields['target']} "
        f"(auth {fields['auth']}, roles {fields['roles']}, rate limit {fields['rate limit']})"
    )


def _describe_upstream(upstream: UpstreamConfig) -> str:
    return ", ".join(t.url for t in upstream.targets)


def _diff_routes(old: tuple[Route, ...], new: tuple[Route, ...]) -> list[str]:
    lines: list[str] = []
    old_by = {_key(r): r for r in old}
    new_by = {_key(r): r for r in new}
    for route in old:
        if _key(route) not in new_by:
            lines.append(f"- route {_describe_route(route)}")
    for route in new:
        before = old_by.get(_key(route))
        if before is None:
            lines.append(f"+ route {_describe_route(route)} (#{route.index + 1})")
            continue
        changed = _changes(_route_fields(before), _route_fields(route))
        if changed:
            lines.append(f"~ route {_methods(route)} {route.path}: {changed}")
    common_old = [_key(r) for r in old if _key(r) in new_by]
    common_new = [_key(r) for r in new if _key(r) in old_by]
    if common_old != common_new:
        moved = [
            f"{methods} {path} #{old_by[(methods, path)].index + 1} -> "
            f"#{new_by[(methods, path)].index + 1}"
            for methods, path in common_new
            if common_old.index((methods, path)) != common_new.index((methods, path))
        ]
        lines.append(f"~ first-match order: {'; '.join(moved)}")
    return lines


def _diff_named(
    kind: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    fields: Callable[[Any], dict[str, str]],
    describe: Callable[[Any], str],
) -> list[str]:
    lines: list[str] = []
    for name in sorted(set(old) | set(new)):
        if name not in new:
            lines.append(f"- {kind} {name}: {describe(old[name])}")
        elif name not in old:
            lines.append(f"+ {kind} {name}: {describe(new[name])}")
        else:
            changed = _changes(fields(old[name]), fields(new[name]))
            if changed:
                lines.append(f"~ {kind} {name}: {changed}")
    return lines
