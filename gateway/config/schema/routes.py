"""routes.yaml's routes entries and the rate limits routes and models take."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from gateway.config.schema.fields import config_dataclass, doc
from gateway.config.units import Rate

AuthMode = Literal["required", "none"]


@config_dataclass
class RateLimitConfig:
    """rate_limit: `60/min`, `{limit: 5, per: 1m, key: ip}`, or `off` for no limit."""

    rate: Rate = doc(
        "requests allowed per period: `60/min`, or limit (a whole number, at least 1) per "
        "a duration longer than zero",
        key="limit, per",
        kind="rate",
        minimum=1,
    )
    key: str = doc(
        "what is counted apart: each user, client IP, route, or value of header NAME",
        default="user",
        choices=("user", "ip", "route", "header:NAME"),
    )


@config_dataclass
class Route:
    """routes[]: a path pattern sent to a local handler, an upstream or a folder of files;
    first match wins, static routes after every other route."""

    index: int = doc("position in first-match order", key=None)
    path: str = doc(
        "pattern: literal segments, {name} for one segment, trailing **", kind="pattern"
    )
    methods: frozenset[str] | None = doc(
        "HTTP methods matched (GET admits HEAD); absent: every method",
        kind="list of methods",
        default_text="",
    )
    handler: str | None = doc(
        "local endpoint to answer; give this, upstream or static", default=None
    )
    upstream: str | None = doc("upstream to proxy to; give this, handler or static", default=None)
    static: Path | None = doc(
        "folder whose files answer GET and HEAD (relative to routes.yaml's folder); the path "
        "must end with /**, which names the file",
        default=None,
        kind="path",
    )
    spa: bool = doc(
        "static: a GET for no file that accepts text/html gets the folder's index.html",
        default=False,
    )
    strip_prefix: str | None = doc(
        "path prefix removed before proxying (/analytics: /analytics/x → /x)", default=None
    )
    auth: AuthMode = doc(
        "whether a valid token is needed", default="required", choices=("none", "required")
    )
    roles: tuple[str, ...] = doc(
        "roles that may use the route (any one); absent: any valid token",
        default=(),
        kind="list of roles",
    )
    rate_limit: RateLimitConfig | None = doc("requests allowed per key and period", default=None)
    model: str | None = doc("the model a models: entry made this route for", default=None, key=None)
    retry_after_send: bool = doc(
        "resend a bodiless idempotent request whose connection broke after sending",
        default=False,
    )
    websocket: bool = doc(
        "proxy WebSocket upgrades (RFC 6455) to the upstream; off: an upgrade is a 400",
        default=False,
    )
    websocket_idle_timeout: float = doc(
        "a WebSocket with no frame either way this long is closed (1001)",
        default=300.0,
        above=0,
    )
    websocket_max_duration: float = doc(
        "a WebSocket open this long is closed (1001); the client reconnects",
        default=86400.0,
        above=0,
    )
    source: str = doc("FILE:LINE of the entry, for messages", default="", key=None)

    @property
    def target(self) -> str:
        if self.static is not None:
            return f"static {self.static}" + (" (spa)" if self.spa else "")
        return f"upstream {self.upstream}" if self.upstream else f"handler {self.handler}"
