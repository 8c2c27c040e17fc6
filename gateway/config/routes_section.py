"""routes.yaml's routes entries → `Route`: path, target, methods, auth, roles, rate limit.

Also the parts `models:` entries share (`route_common`, `parse_rate_limit`)
and the check that no two routes match the same paths.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from gateway.config.auth_section import parse_roles
from gateway.config.bounded import integer_within, read_duration
from gateway.config.schema.fields import key_doc
from gateway.config.schema.routes import RateLimitConfig, Route
from gateway.config.units import Rate, parse_duration, parse_rate
from gateway.config.yamlsource import Invalid, Problems, Section, Value
from gateway.routing import compile_pattern, literal_prefix

# the route keys a models: entry takes too (`route_common` and `websocket_fields` read them)
ROUTE_KEYS = (
    "methods",
    "auth",
    "roles",
    "rate_limit",
    "retry_after_send",
    "websocket",
    "websocket_idle_timeout",
    "websocket_max_duration",
)
_METHOD = re.compile(r"^[A-Z]+$")
_PARAM_NAME = re.compile(r"\{[^/{}]+\}")
_HEADER = re.compile(r"^[A-Za-z0-9-]+$")
STATIC_METHODS = frozenset({"GET", "HEAD"})  # what a static route answers; others get 405
_OFF = frozenset({"off", "none"})  # rate_limit values that turn a limit off
_NO_ROLES: tuple[str, ...] = ()  # roles: absent, any valid token will do
# The defaults of the keys read with read_duration (index, path: placeholders)
_ROUTE_DEFAULTS = Route(index=-1, path="/", methods=None)


def parse_route(
    index: int,
    value: Value,
    problems: Problems,
    handlers: frozenset[str],
    upstream_refs: list[tuple[str, Value]],
    role_refs: list[tuple[str, Value]],
    base_dir: Path,
) -> Route | None:
    """routes[index], or None when it is unusable (every fault reported).

    The upstream and the roles it names go to `upstream_refs` and `role_refs`,
    checked once every upstream and policies/ are read. A `static` folder is
    relative to `base_dir`, routes.yaml's folder, and must exist.
    """
    try:
        sec = value.section(problems)
    except Invalid as exc:
        problems.add(value.file, value.line, str(exc))
        return None
    path = sec.field("path", lambda v: v.convert_text(compile_pattern), None)
    handler = sec.field("handler", Value.text, None)
    upstream = sec.field("upstream", Value.text, None)
    static = sec.field("static", lambda v: _folder(v, base_dir), None)
    spa = sec.field("spa", Value.boolean, False)
    strip = sec.field("strip_prefix", lambda v: v.convert_text(_strip_prefix), None)
    common = route_common(sec, problems, role_refs)
    sockets = websocket_fields(sec, f"{value.key}")
    sec.check_unknown(
        "path, methods, handler, upstream, static, spa, strip_prefix, auth, roles, rate_limit, "
        "retry_after_send, websocket, websocket_idle_timeout, websocket_max_duration"
    )
    where = f"{value.key}"
    ok = sockets is not None
    if sec.get("path") is None:  # absent or empty
        sec.report(value, f"{where}: needs a path")
        ok = False
    upstream_value = sec.get("upstream")
    if upstream is not None and upstream_value is not None:
        upstream_refs.append((upstream, upstream_value))
    has_static = sec.get("static") is not None  # given, even when its folder is missing
    if static is None and has_static:
        ok = False  # the folder's fault is reported
    targets = (handler is not None) + (upstream is not None) + has_static
    if targets != 1:
        sec.report(value, f"{where}: give exactly one of handler, upstream or static")
        ok = False
    if handler is not None and handler not in handlers:
        known = ", ".join(sorted(handlers)) or "none yet"
        sec.report(sec.get("handler"), f"{where}.handler: unknown handler {handler!r} ({known})")
        ok = False
    local = handler is not None or has_static  # answered by the gateway itself
    if strip is not None and local:
        sec.report(sec.get("strip_prefix"), f"{where}.strip_prefix: only applies to upstreams")
        ok = False
    if common["retry_after_send"] and local:
        sec.report(
            sec.get("retry_after_send"), f"{where}.retry_after_send: only applies to upstreams"
        )
        ok = False
    if sockets and sockets["websocket"] and local:
        sec.report(sec.get("websocket"), f"{where}.websocket: only applies to upstreams")
        ok = False
    if strip is not None and path is not None and not _is_segment_prefix(strip, path):
        sec.report(
            sec.get("strip_prefix"),
            f"{where}.strip_prefix: {strip!r} is not a prefix of the path {path!r}",
        )
        ok = False
    if has_static:
        ok = _static_shape(sec, where, path, common) and ok
    elif sec.get("spa") is not None:
        sec.report(sec.get("spa"), f"{where}.spa: only applies with static")
        ok = False
    if not ok or path is None or sockets is None:
        return None
    return Route(
        index=index,
        path=path,
        handler=handler,
        upstream=upstream,
        static=static,
        spa=spa,
        strip_prefix=strip,
        source=f"{value.file}:{value.line}",
        **sockets,  # type: ignore[arg-type]
        **common,  # type: ignore[arg-type]
    )


def websocket_fields(sec: Section, where: str) -> dict[str, object] | None:
    """`websocket` and its two limits, shared by routes and models: entries; None when a
    limit is given without `websocket: true` (reported)."""
    websocket = sec.field("websocket", Value.boolean, False)
    fields: dict[str, object] = {
        "websocket": websocket,
        "websocket_idle_timeout": read_duration(sec, _ROUTE_DEFAULTS, "websocket_idle_timeout"),
        "websocket_max_duration": read_duration(sec, _ROUTE_DEFAULTS, "websocket_max_duration"),
    }
    usable = True
    for key in ("websocket_idle_timeout", "websocket_max_duration"):
        if not websocket and sec.get(key) is not None:
            sec.report(sec.get(key), f"{where}.{key}: only applies with websocket: true")
            usable = False
    return fields if usable else None


def _folder(value: Value, base_dir: Path) -> Path:
    """`static:` → an absolute folder that exists; not resolved, so a folder that is a
    symlink (a release switched atomically) is followed afresh by each request."""
    folder = Path(os.path.normpath(base_dir / value.text()))
    if not folder.exists():
        raise Invalid(f"{value.key}: folder not found: {folder}")
    if not folder.is_dir():
        raise Invalid(f"{value.key}: not a folder: {folder}")
    return folder


def _static_shape(sec: Section, where: str, path: str | None, common: dict[str, object]) -> bool:
    """A static route's path ends with /** (the rest names the file) and its methods are
    GET and HEAD, the default (README "Serving the frontend"); also fills that default."""
    ok = True
    if path is not None and not path.endswith("/**"):
        sec.report(sec.get("path"), f"{where}.path: a static route's path ends with /**")
        ok = False
    methods = common["methods"]
    if methods is None:
        common["methods"] = STATIC_METHODS
    elif not isinstance(methods, frozenset) or not methods <= STATIC_METHODS:
        sec.report(sec.get("methods"), f"{where}.methods: a static route answers GET and HEAD")
        ok = False
    else:
        common["methods"] = methods | {"HEAD"}  # HEAD alone is still answered as GET would be
    return ok


def route_common(
    sec: Section, problems: Problems, role_refs: list[tuple[str, Value]]
) -> dict[str, object]:
    """methods, auth, roles, rate_limit and retry_after_send of a Route, as keyword
    arguments; roles go to `role_refs`."""
    methods = sec.field("methods", _methods, None)
    auth = sec.field("auth", _auth_mode, "required")
    roles = sec.field("roles", parse_roles, _NO_ROLES)
    roles_value = sec.get("roles")
    if roles_value is not None:
        role_refs.extend((role, roles_value) for role in dict.fromkeys(roles))
    return {
        "methods": methods,
        "auth": auth,
        "roles": roles,
        "rate_limit": sec.field("rate_limit", lambda v: parse_rate_limit(v, problems), None),
        "retry_after_send": sec.field("retry_after_send", Value.boolean, False),
    }


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


def _auth_mode(value: Value) -> str:
    text = value.text()
    modes = key_doc(Route, "auth").choices
    if text not in modes:
        raise Invalid(f"{value.key}: must be {' or '.join(modes)}, not {text!r}")
    return text


def parse_rate_limit(
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
    limit_bounds = key_doc(RateLimitConfig, "rate")  # the limit's; `per` is a duration
    limit = sec.field("limit", lambda v: integer_within(v, limit_bounds), None)
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
    if text.startswith("header:") and _HEADER.match(text[7:]):
        return "header:" + text[7:].lower()
    *named, header = key_doc(RateLimitConfig, "key").choices  # the last, header:NAME, is a pattern
    if text in named:
        return text
    raise Invalid(f"{value.key}: must be {', '.join(named)} or {header}, not {text!r}")


def _strip_prefix(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError("must start with /")
    return text.rstrip("/") or "/"


def _is_segment_prefix(prefix: str, pattern: str) -> bool:
    static = literal_prefix(pattern)
    return prefix == "/" or static == prefix or static.startswith(prefix + "/")


def check_route_paths(routes: list[Route], problems: Problems, file: str) -> None:
    """Report each route whose path matches exactly the paths of an earlier one."""
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
