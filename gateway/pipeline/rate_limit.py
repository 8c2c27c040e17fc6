"""The rate-limit decisions: the route's GCRA bucket (429 rate_limited) and a model's
token quota (429 token_quota; 400 max_tokens_over_quota for a max_tokens no wait
would let pass), each with its RateLimit-* headers. On every 429, Retry-After is
when this request would pass and RateLimit-Reset when the whole quota is back,
never less than Retry-After (gateway/state/gcra.py `refused`).

A route's bucket key is the route plus the route's `key`: the caller's user
id (the default; the client IP when nobody is signed in), the client IP (from
X-Forwarded-For only behind a trusted proxy), the route as a whole, or a
named header (the client IP when the header is absent). A token quota's key
is `tokens|MODEL|` and the same counted part. Every response of a limited
route carries RateLimit-Limit/Remaining/Reset; a 429 adds Retry-After. The
limiter arithmetic is gateway/state/gcra.py; counting happens in the Limiter or
QuotaStore handed to the stage (gateway/state/interfaces.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config.units import format_duration
from gateway.pipeline.verdict import Deny, Pass, RequestView
from gateway.problems import GatewayError

if TYPE_CHECKING:
    from gateway.config.schema.routes import RateLimitConfig, Route
    from gateway.state.gcra import Decision

UNREAD = "?"  # the client IP `explain` shows when it was not given


def counted_as(kind: str, user_id: str | None, client_ip: str, header: str | None) -> str:
    """Who a limit keyed by `kind` counts: user (else IP), ip, route or header:NAME."""
    if kind == "user":
        return f"user:{user_id}" if user_id is not None else f"ip:{client_ip}"
    if kind == "ip":
        return f"ip:{client_ip}"
    if kind == "route":
        return "route"
    # header:NAME; without the header, the client IP
    return f"{kind}={header[:128]}" if header else f"ip:{client_ip}"


def counted(view: RequestView, kind: str, user_id: str | None = None) -> str:
    """The counted part of a key for this request (`user_id`: before `view.user` is set)."""
    if user_id is None and view.user is not None:
        user_id = view.user.id
    header = view.headers.get(kind[7:]) if kind.startswith("header:") else None
    return counted_as(kind, user_id, view.client_ip, header)


def bucket(view: RequestView, route: Route, kind: str, user_id: str | None = None) -> str:
    """The limiter key of the route's bucket: route pattern | what is counted."""
    return f"{route.path}|{counted(view, kind, user_id)}"


def quota_key(view: RequestView, model: str, kind: str) -> str:
    """The limiter key of a model's token quota."""
    return f"tokens|{model}|{counted(view, kind)}"


def decide(route: Route, limit: RateLimitConfig, decision: Decision) -> Pass | Deny:
    """The route's limit, once its bucket has counted this request."""
    headers = decision.headers()
    if decision.allowed:
        return Pass(headers)
    rate = limit.rate
    return Deny(
        "rate_limited",
        429,
        f"rate limit {rate} by {limit.key} on {route.path} exceeded; "
        f"retry in {decision.retry_after}s",
        headers,
    )


def describe(key: str, limit: RateLimitConfig, decision: Decision | None) -> str:
    """What `explain` says about a bucket it peeked at (None: not read)."""
    if decision is None:
        return f"bucket {key}: {limit.rate} by {limit.key} (not read)"
    return (
        f"bucket {key}: {decision.remaining} of {limit.rate.limit} left "
        f"({limit.rate} by {limit.key}); nothing was counted"
    )


def over_quota(limit: RateLimitConfig, max_tokens: int) -> GatewayError | None:
    """400 `max_tokens_over_quota` when a request's stated max_tokens alone is over the
    quota's whole limit: it could never be reserved, however long the caller waited."""
    rate = limit.rate
    if max_tokens <= rate.limit:
        return None
    return GatewayError.max_tokens_over_quota(max_tokens, rate.limit, format_duration(rate.period))


def decide_quota(
    model: str, limit: RateLimitConfig, reserve: int, decision: Decision
) -> Pass | Deny:
    """A model's token quota, once `reserve` tokens have been asked of its bucket."""
    headers = decision.headers()  # RateLimit-* counted in tokens
    if decision.allowed:
        return Pass(headers)
    rate = limit.rate
    return Deny(
        "token_quota",
        429,
        f"token quota {rate} by {limit.key} on model {model} is spent "
        f"(this call reserves {reserve} tokens); retry in {decision.retry_after}s",
        headers,
    )
