"""routes.yaml's upstreams entries → `UpstreamConfig`: targets, timeouts, health, retries, TLS.

`models:` entries are upstreams too: they share `upstream_fields` and the
target parsers, with their own defaults.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

from gateway.config.bounded import number_range, read_duration, read_whole, whole_number
from gateway.config.schema.fields import key_doc
from gateway.config.schema.upstreams import (
    DEFAULT_PASSIVE,
    DEFAULT_RETRY_BUDGET,
    Balance,
    HealthCheckConfig,
    PassiveConfig,
    RetryBudgetConfig,
    UpstreamConfig,
    UpstreamTarget,
    UpstreamTLSConfig,
)
from gateway.config.units import format_duration
from gateway.config.yamlsource import Invalid, Problems, Section, Value
from gateway.tls.files import ca_problem, pair_problem

UPSTREAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # upstream and model names
# the keys `upstream_fields` reads, besides targets (models add their own)
UPSTREAM_KEYS = (
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


def parse_upstream(
    name: str, value: Value, problems: Problems, top: Section
) -> UpstreamConfig | None:
    """upstreams.NAME, or None when it is unusable (every fault reported)."""
    if not UPSTREAM_NAME.match(name):
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
        targets = sec.field("targets", lambda v: parse_targets(v, problems), ())
    upstream = upstream_fields(sec, UpstreamConfig(name=name, targets=targets, line=value.line))
    sec.check_unknown(", ".join(UPSTREAM_KEYS))
    return upstream if targets else None


def upstream_fields(sec: Section, defaults: UpstreamConfig) -> UpstreamConfig:
    """`defaults` (name, targets, line and the defaults) with the keys `sec` writes."""
    targets = defaults.targets
    return UpstreamConfig(
        name=defaults.name,
        targets=targets,
        timeout=read_duration(sec, defaults, "timeout"),
        connect_timeout=read_duration(sec, defaults, "connect_timeout"),
        first_byte_timeout=read_duration(sec, defaults, "first_byte_timeout"),
        max_connections=read_whole(sec, defaults, "max_connections"),
        max_pending=read_whole(sec, defaults, "max_pending"),
        forward_authorization=sec.field(
            "forward_authorization", Value.boolean, defaults.forward_authorization
        ),
        pass_host=sec.field("pass_host", Value.boolean, defaults.pass_host),
        balance=sec.field("balance", _balance, defaults.balance),
        health_check=sec.field(
            "health_check", lambda v: _health_check(v, sec.problems), defaults.health_check
        ),
        passive=sec.field("passive", lambda v: _passive(v, sec.problems), defaults.passive),
        retries=read_whole(sec, defaults, "retries"),
        retry_budget=sec.field(
            "retry_budget", lambda v: _retry_budget(v, sec.problems), defaults.retry_budget
        ),
        tls=sec.field("tls", lambda v: _upstream_tls(v, sec.problems, targets), defaults.tls),
        line=defaults.line,
    )


def parse_target(value: Value, weight: int = 1) -> UpstreamTarget:
    """An http:// or https:// base URL, without query, fragment or credentials."""
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


def parse_targets(value: Value, problems: Problems) -> tuple[UpstreamTarget, ...]:
    """`[URL, {url: URL, weight: N}, ...]`: each item a URL, or a URL with its weight."""
    targets: list[UpstreamTarget] = []
    for item in value.items():
        if item.is_mapping():
            sec = item.section(problems)
            url = sec.get("url")
            weight = sec.field("weight", whole_number(UpstreamTarget, "weight"), 1)
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


def _balance(value: Value) -> Balance:
    text = value.text()
    modes = key_doc(UpstreamConfig, "balance").choices
    if text in modes:
        return cast(Balance, text)
    raise Invalid(f"{value.key}: must be one of {', '.join(modes)}, not {text!r}")


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
        interval=read_duration(sec, default, "interval"),
        timeout=read_duration(sec, default, "timeout"),
        healthy=read_whole(sec, default, "healthy"),
        unhealthy=read_whole(sec, default, "unhealthy"),
    )
    sec.check_unknown("path, interval, timeout, healthy, unhealthy")
    return check


def _passive(value: Value, problems: Problems) -> PassiveConfig:
    sec = value.section(problems)
    default = DEFAULT_PASSIVE
    passive = PassiveConfig(
        failures=read_whole(sec, default, "failures"),
        backoff=read_duration(sec, default, "backoff"),
        max_backoff=read_duration(sec, default, "max_backoff"),
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
    low, high = number_range(RetryBudgetConfig, "ratio")
    if not low <= ratio <= high:
        raise Invalid(f"{value.key}: must be between {low:.0%} and {high:.0%}", value.line)
    return ratio


def _retry_budget(value: Value, problems: Problems) -> RetryBudgetConfig:
    default = DEFAULT_RETRY_BUDGET
    if not value.is_mapping():
        return RetryBudgetConfig(ratio=_ratio(value), min_per_second=default.min_per_second)
    sec = value.section(problems)
    budget = RetryBudgetConfig(
        ratio=sec.field("ratio", _ratio, default.ratio),
        min_per_second=read_whole(sec, default, "min_per_second"),
    )
    sec.check_unknown("ratio, min_per_second")
    return budget


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
