"""Explain why: replay the chain for a method, path and token without proxying anything.

Each stage says what it found and whether it passed, denied or had nothing
to do; the first denial decides, with the same status and reason code the
request itself would get (and its audit row would record). Nothing is
changed: the rate limit is peeked at, not counted; a token is verified and
looked up, not used. `POST /admin/explain` runs it on the live config and
state; `gateway explain` runs it on routes.yaml and the database.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from gateway.config.schema.routes import Route
from gateway.pipeline import policy, rate_limit
from gateway.pipeline.authentication import MISSING_TOKEN, describe, identify, judge_account
from gateway.pipeline.rate_limit import UNREAD, bucket
from gateway.pipeline.route import find_route, normalise
from gateway.pipeline.verdict import Deny, PlainView, Principal

if TYPE_CHECKING:
    from gateway.runtime import Runtime
    from gateway.state.interfaces import IdentityStore, Limiter

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

    def deny(self, stage: str, verdict: Deny) -> Explanation:
        self.steps.append(Step(stage, "deny", verdict.detail, verdict.code))
        self.decided_by, self.status, self.code = stage, verdict.status, verdict.code
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
    identity: IdentityStore | None,
    limiter: Limiter | None,
    client_ip: str = "",
) -> Explanation:
    """The chain's decision for this request on `runtime`, stage by stage.

    Each step asks the stage's own decision (gateway/pipeline/), so a message
    or a rule here is the one the request itself would meet."""
    out = Explanation(method=method.upper(), path=path)
    normalised = normalise(path.partition("?")[0])
    if isinstance(normalised, Deny):
        return out.deny("route", normalised)
    out.normalised = normalised
    found = find_route(runtime, out.method, normalised)
    if isinstance(found, Deny):
        return out.deny("route", found)
    route = found.route
    out.route, out.target = route.path, route.target
    out.steps.append(Step("route", "pass", f"{route.path} ({route.source}) -> {route.target}"))
    view = PlainView(out.method, normalised, {}, client_ip or UNREAD)
    caller: Principal | None = None
    if route.auth == "none":
        out.steps.append(Step("authentication", "skip", "the route is auth: none"))
    else:
        found_caller = await _authenticate(out, runtime, token, identity)
        if found_caller is None:
            return out
        caller = found_caller
    if caller is None:
        out.steps.append(Step("policy", "skip", "no caller to judge"))
    else:
        allowed = runtime.allowed.get(route.index)
        verdict = policy.decide(caller.role, allowed, route.path, route.roles)
        if isinstance(verdict, Deny):
            return out.deny("policy", verdict)
        out.steps.append(Step("policy", "pass", policy.describe(caller.role, allowed, route.roles)))
    await _rate_limit(out, route, view, caller, limiter)
    return out


async def _authenticate(
    out: Explanation, runtime: Runtime, token: str | None, identity: IdentityStore | None
) -> Principal | None:
    if not token:
        out.deny("authentication", MISSING_TOKEN)
        return None
    own = runtime.config.auth.issuer
    claims = await identify(runtime, token)
    if isinstance(claims, Deny):
        out.deny("authentication", claims)
        return None
    if isinstance(claims, Principal):  # an outside issuer's caller: nothing of ours to ask
        out.steps.append(Step("authentication", "pass", describe(claims, own)))
        return claims
    if identity is None:
        out.steps.append(
            Step(
                "authentication",
                "pass",
                f"valid token of user {claims.sub}, verified as the gateway's own "
                f"(iss {own!r}; revocation and account state not checked)",
            )
        )
        return Principal(claims.sub, claims.sub, claims.role, claims.jti, float(claims.exp))
    revoked, state = await identity.check(claims.jti, claims.sub)
    caller = judge_account(claims, revoked, state)
    if isinstance(caller, Deny):
        out.deny("authentication", caller)
        return None
    out.steps.append(Step("authentication", "pass", describe(caller, own)))
    return caller


async def _rate_limit(
    out: Explanation,
    route: Route,
    view: PlainView,
    caller: Principal | None,
    limiter: Limiter | None,
) -> None:
    limit = route.rate_limit
    if limit is None:
        out.steps.append(Step("rate limit", "skip", "the route has no rate limit"))
        return
    # the bucket the rate-limit stage would count (a header's value is not known here)
    key = bucket(view, route, limit.key, caller.id if caller is not None else None)
    if limiter is None or limit.key.startswith("header:"):
        out.steps.append(Step("rate limit", "pass", rate_limit.describe(key, limit, None)))
        return
    rate = limit.rate
    decision = await limiter.peek(key, rate.limit, rate.period)
    verdict = rate_limit.decide(route, limit, decision)
    if isinstance(verdict, Deny):
        out.deny("rate limit", verdict)
        return
    out.steps.append(Step("rate limit", "pass", rate_limit.describe(key, limit, decision)))
