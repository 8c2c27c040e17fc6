"""What a config change would change: routes, their order, upstreams, roles and settings.

`gateway routes --diff OLD NEW` prints one line per difference: `+` added,
`-` removed, `~` changed (with old -> new). Routes are matched by methods
and path; a route that keeps its place among the others but changes its
target, auth, roles, rate limit or prefix stripping is one `~` line. Since
the first matching route wins, a change in the order of the routes both
files have is reported too. Every other setting (`server`, `auth`, `audit`,
`database`, `policies`, each model's own keys) is one `~ KEY.PATH: old -> new`
line, values written as in routes.yaml and paths relative to each file's
folder; a secret's value is never shown. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gateway.config.reference import SECTIONS, as_written, documented_keys
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
    lines += [
        f"~ {path}: {before} -> {after}" for path, before, after in settings_changes(old, new)
    ]
    lines += _diff_policy_files(old, new)
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


# --- settings: every key outside routes and upstreams, by its path ----------------

_SECTION_CLASSES = frozenset(cls for _, cls in SECTIONS)
# keys whose values are never printed: a changed one shows as `(hidden)`
_SECRET = re.compile(r"(secret|password|token|key)$")
ABSENT = "—"


def settings_changes(old: Config, new: Config) -> list[tuple[str, str, str]]:
    """(KEY.PATH, old value, new value) of each setting that differs, in file order."""
    before, after = _settings(old), _settings(new)
    changes = []
    for path in list(before) + [p for p in after if p not in before]:
        was, now = before.get(path, ABSENT), after.get(path, ABSENT)
        if was == now:
            continue
        name = path.rsplit(".", 1)[-1]
        if _SECRET.search(name):
            was, now = (ABSENT if v == ABSENT else "(hidden)" for v in (was, now))
            if was == now:
                was, now = "(hidden)", "(hidden, changed)"
        changes.append((path, was, now))
    return changes


def _settings(config: Config) -> dict[str, str]:
    values: dict[str, str] = {}
    for section in ("server", "auth", "audit", "database"):
        _flatten(getattr(config, section), section, config.base_dir, values)
    values["policies"] = _path(config.policies_dir, config.base_dir)
    for name, model in config.models.items():
        _flatten(model, f"models.{name}", config.base_dir, values)
    return values


def _flatten(obj: Any, prefix: str, base: Path, into: dict[str, str]) -> None:
    """Each documented key of the config dataclass `obj` → its value as written."""
    fields = {each.name: each for each in dataclasses.fields(obj)}
    for each, meaning in documented_keys(type(obj)):
        key = str(meaning.key)
        path = f"{prefix}.{key}"
        value = getattr(obj, each.name)
        if isinstance(value, frozenset):  # a set: the same set in any order
            value = tuple(sorted(value, key=str))
        if key == "listen" and "port" in fields:  # host and port are two fields
            into[path] = f"{value}:{obj.port}"
        elif type(value) in _SECTION_CLASSES:
            _flatten(value, path, base, into)
        elif isinstance(value, tuple) and value and type(value[0]) in _SECTION_CLASSES:
            for i, item in enumerate(value):
                label = getattr(item, "kid", None) or getattr(item, "issuer", None) or i
                _flatten(item, f"{path}[{label}]", base, into)
        elif value is None:
            into[path] = ABSENT
        elif isinstance(value, Path):
            into[path] = _path(value, base)
        elif key.endswith("listen") or key == "redirect_http":
            into[path] = ":".join(str(part) for part in value)
        else:
            into[path] = as_written(each, meaning, value)


def _path(path: Path, base: Path) -> str:
    """`path` as written: relative to the config's folder when under it."""
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _diff_policy_files(old: Config, new: Config) -> list[str]:
    """Policy files added or removed (by name in the policies folder)."""
    before = {_path(f, old.policies_dir) for f in old.policy.files}
    after = {_path(f, new.policies_dir) for f in new.policy.files}
    return [f"- policy file {name}" for name in sorted(before - after)] + [
        f"+ policy file {name}" for name in sorted(after - before)
    ]
