"""Explain why: replay the chain for a method, path and token without proxying anything.

Each stage says what it found and whether it passed, denied or had nothing
to do; the first denial decides, with the same status and reason code the
request itself would get (and its audit row would record). Nothing is
changed: the rate limit is peeked at, not counted; a token is verified and
looked up, not used. `POST /admin/explain` runs it on the live config and
state; `gateway explain` runs it on routes.yaml and the database.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from gateway.config.schema import Route
from gateway.middleware.rate_limit import counted_as
from gateway.problems import GatewayError
from gateway.routing import request_path
from gateway.runtime import Runtime
from gateway.security.tokens import TokenError
from gateway.state.identity import LocalIdentity
from gateway.state.limiter import LocalLimiter

Outcome = Literal["pass", "deny", "skip"]


@dataclass(frozen=True)
class Step:
    stage: str
    outcome: Outcome
    detail: str
    code: str | None = None  # the reason code of a denial (as in the problem and audit row)


@dataclass
class Explanation:
    method: str
    path: str  # as asked
    normalised: str | None = None
    route: str | None = None
    target: str | None = None  # "upstream NAME" or "handler NAME"
    steps: list[Step] = field(default_factory=list)
    decided_by: str | None = None  # the stage that denied; None: allowed
    status: int | None = None  # the denial's status; None: allowed
    code: str | None = None

    @property
    def allowed(self) -> bool:
        return self.decided_by is None

    def deny(self, stage: str, error: GatewayError, detail: str | None = None) -> Explanation:
        self.steps.append(Step(stage, "deny", detail or error.detail, error.code))
        self.decided_by, self.status, self.code = stage, error.status, error.code
        return self

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["allowed"] = self.allowed
        return out

    def lines(self) -> list[str]:
        """The explanation for a terminal, one line per stage, then the verdict."""
        out = [f"{self.method} {self.path}"]
        for step in self.steps:
            code = f" ({step.code})" if step.code else ""
            out.append(f"  {step.stage:<15}{step.outcome}{code}: {step.detail}")
        if self.allowed:
            out.append(f"allowed: would go to {self.target}")
        else:
            out.append(f"denied by {self.decided_by}: {self.status} {self.code}")
        return out


async def explain(
    runtime: Runtime,
    method: str,
    path: str,
    token: str | None,
    identity: LocalIdentity | None,
    limiter: LocalLimiter | None,
    client_ip: str = "",
) -> Explanation:
    """The chain's decision for this request on `runtime`, stage by stage."""
    out = Explanation(method=method.upper(), path=path)
    route = _route(out, runtime, path)
    if route is None:
        return out
    user_id, role = None, None
    if route.auth == "none":
        out.steps.append(Step("authentication", "skip", "the route is auth: none"))
    else:
        found = await _authenticate(out, runtime, token, identity)
        if found is None:
            return out
        user_id, role = found
    if role is None:
        out.steps.append(Step("policy", "skip", "no caller to judge"))
    else:
        allowed = runtime.allowed.get(route.index)
        if allowed is None:
            out.steps.append(Step("policy", "pass", "the route admits any valid token"))
        elif role in allowed:
            needs = ", ".join(route.roles)
            out.steps.append(Step("policy", "pass", f"role {role!r} passes (needs {needs})"))
        else:
            error = GatewayError(
                403,
                "role_forbidden",
                f"role {role!r} may not use {route.path} (needs {', '.join(route.roles)})",
            )
            return out.deny("policy", error)
    await _rate_limit(out, route, user_id, client_ip, limiter)
    return out


def _route(out: Explanation, runtime: Runtime, path: str) -> Route | None:
    raw = path.partition("?")[0]
    try:
        normalised = request_path(raw)
    except ValueError as exc:
        out.deny("route", GatewayError.bad_request(str(exc), code="bad_path"))
        return None
    out.normalised = normalised
    builtin = runtime.builtins.get(normalised)
    try:
        if builtin is not None:
            if out.method not in (builtin.methods or ()):
                raise GatewayError.method_not_allowed(out.method, sorted(builtin.methods or ()))
            route = builtin
        else:
            route = runtime.table.match(out.method, normalised).route
    except GatewayError as error:
        out.deny("route", error)
        return None
    out.route = route.path
    out.target = route.target
    out.steps.append(Step("route", "pass", f"{route.path} ({route.source}) -> {route.target}"))
    return route


async def _authenticate(
    out: Explanation, runtime: Runtime, token: str | None, identity: LocalIdentity | None
) -> tuple[str, str] | None:
    if not token:
        out.deny("authentication", GatewayError(401, "missing_token", "no bearer token given"))
        return None
    try:
        claims = runtime.verifier.verify(token)
    except TokenError as exc:
        out.deny("authentication", GatewayError(401, exc.code, exc.detail))
        return None
    if identity is None:
        out.steps.append(
            Step(
                "authentication",
                "pass",
                f"valid token of user {claims.sub} (revocation and account state not checked)",
            )
        )
        return claims.sub, claims.role
    revoked, state = await identity.check(claims.jti, claims.sub)
    if state is None or not state.active:
        out.deny("authentication", GatewayError(401, "user_inactive", "the account is deactivated"))
        return None
    if revoked:
        out.deny("authentication", GatewayError(401, "token_revoked", "the token was revoked"))
        return None
    expires = max(0, int(claims.exp - time.time()))
    out.steps.append(
        Step(
            "authentication",
            "pass",
            f"user {state.username!r} ({claims.sub}), role {state.role!r} now; "
            f"the token expires in {expires} s",
        )
    )
    return claims.sub, state.role


async def _rate_limit(
    out: Explanation,
    route: Route,
    user_id: str | None,
    client_ip: str,
    limiter: LocalLimiter | None,
) -> None:
    limit = route.rate_limit
    if limit is None:
        out.steps.append(Step("rate limit", "skip", "the route has no rate limit"))
        return
    rate = limit.rate
    # the bucket the rate-limit stage would count (a header's value is not known here)
    bucket = f"{route.path}|{counted_as(limit.key, user_id, client_ip or '?', None)}"
    if limiter is None or limit.key.startswith("header:"):
        out.steps.append(
            Step("rate limit", "pass", f"bucket {bucket}: {rate} by {limit.key} (not read)")
        )
        return
    decision = await limiter.peek(bucket, rate.limit, rate.period)
    if decision.allowed:
        out.steps.append(
            Step(
                "rate limit",
                "pass",
                f"bucket {bucket}: {decision.remaining} of {rate.limit} left "
                f"({rate} by {limit.key}); nothing was counted",
            )
        )
        return
    error = GatewayError(
        429,
        "rate_limited",
        f"bucket {bucket} is spent ({rate} by {limit.key}); retry in {decision.retry_after}s",
    )
    out.deny("rate limit", error)
