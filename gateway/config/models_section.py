"""routes.yaml's models entries → an upstream, a `ModelConfig` and a /models/NAME/** route each.

A model is the AI team's shorthand: upstream keys and route keys in one
entry, with slower timeouts and a per-user rate limit by default, plus usage
reading, token limits and fallbacks.
"""

from __future__ import annotations

from gateway.config.bounded import duration, whole_number
from gateway.config.routes_section import (
    ROUTE_KEYS,
    parse_rate_limit,
    route_common,
    websocket_fields,
)
from gateway.config.schema.fields import key_doc
from gateway.config.schema.models import ModelConfig
from gateway.config.schema.routes import RateLimitConfig, Route
from gateway.config.schema.upstreams import UpstreamConfig, UpstreamTarget
from gateway.config.units import Rate
from gateway.config.upstreams_section import (
    UPSTREAM_KEYS,
    UPSTREAM_NAME,
    parse_target,
    parse_targets,
    upstream_fields,
)
from gateway.config.yamlsource import Invalid, Problems, Section, Value

MODEL_TIMEOUT = 300.0  # models answer slowly: a long default whole-response timeout
MODEL_CONNECT_TIMEOUT = 5.0
# models cost per call: 60/min per user unless the entry says otherwise (`rate_limit: off`)
MODEL_RATE_LIMIT = RateLimitConfig(rate=Rate(60, 60.0), key="user")
_MODEL_KEYS = (
    "usage",
    "token_limit",
    "fallback",
    "max_attempts",
    "fallback_budget",
    "health_path",
)
_NO_FALLBACK: tuple[str, ...] = ()


def parse_model(
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
    """models.NAME: add its upstream, model and route, unless it is unusable (reported).

    The models it falls back to go to `fallback_refs`, its roles to `role_refs`.
    """
    if not UPSTREAM_NAME.match(name):
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
        targets = sec.field("targets", lambda v: parse_targets(v, problems), ())
    defaults = UpstreamConfig(
        name=name,
        targets=targets,
        timeout=MODEL_TIMEOUT,
        connect_timeout=MODEL_CONNECT_TIMEOUT,
        line=value.line,
    )
    upstream = upstream_fields(sec, defaults)
    common = route_common(sec, problems, role_refs)
    sockets = websocket_fields(sec, f"{value.key}")
    if sec.get("rate_limit") is None:  # absent: the default; `off` gave None on purpose
        common["rate_limit"] = MODEL_RATE_LIMIT
    usage = sec.field("usage", _usage_format, None)
    token_limit = sec.field("token_limit", lambda v: parse_rate_limit(v, problems), None)
    fallback = sec.field("fallback", _names, _NO_FALLBACK)
    fallback_value = sec.get("fallback")
    if fallback_value is not None and fallback:
        for other, item in zip(fallback, fallback_value.items(), strict=True):
            if other == name:
                sec.report(item, f"{item.key}: a model cannot fall back to itself")
            else:
                fallback_refs.append((other, item))
    max_attempts = sec.field("max_attempts", whole_number(ModelConfig, "max_attempts"), 0)
    fallback_budget = sec.field("fallback_budget", duration(ModelConfig, "fallback_budget"), None)
    health_path = sec.field("health_path", _health_path, "/")
    sec.check_unknown(", ".join(("url", *UPSTREAM_KEYS, *ROUTE_KEYS, *_MODEL_KEYS)))
    if not targets or sockets is None:
        return
    upstreams[name] = upstream
    models[name] = ModelConfig(
        name=name,
        usage=usage,
        token_limit=token_limit,
        fallback=fallback,
        max_attempts=max_attempts,
        fallback_budget=fallback_budget,
        health_path=health_path,
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
            **sockets,  # type: ignore[arg-type]
            **common,  # type: ignore[arg-type]
        )
    )


def _names(value: Value) -> tuple[str, ...]:
    return tuple(item.text() for item in value.items())


def _health_path(value: Value) -> str:
    text = value.text()
    if not text.startswith("/") or any(c.isspace() or c == "#" for c in text):
        raise Invalid(f"{value.key}: must be a path starting with /, got {text!r}", value.line)
    return text


def _usage_format(value: Value) -> str:
    text = value.text()
    formats = key_doc(ModelConfig, "usage").choices
    if text not in formats:
        raise Invalid(f"{value.key}: unknown usage format {text!r} ({', '.join(formats)})")
    return text
