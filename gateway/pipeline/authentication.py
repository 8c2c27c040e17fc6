"""The authentication decision: a valid, unrevoked bearer token of an active user (401).

401 (RFC 6750) when there is no token, or the token fails: bad signature,
expired, wrong issuer, algorithm not the configured one, unknown key id,
revoked, or its user deactivated. The caller's current role is taken from
the user's state, not the token, so a role change applies at once.

A token whose `iss` is one of `auth.issuers` is an outside provider's: it is verified
with that issuer's keys and its role mapped from its claims (403 role_not_mapped when
none maps and the entry has no default_role). It is not ours, so neither the users
table nor the revocation list is asked: its lifetime is its `exp`, and deactivating is
done at the provider (README "Signing in through an outside identity provider").

`verify`, `judge_account` and `judge_outside` are pure; `Authenticator` does the one
lookup between them (revocation and user state) in the identity store it was given,
and `identify` awaits an outside issuer's keys (cached; fetched only for a new kid).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

from gateway.pipeline.rate_limit import bucket
from gateway.pipeline.verdict import Deny, Principal, RequestView
from gateway.problems import GatewayError
from gateway.security.outside import OutsideClaims, claimed_issuer, mapped_role
from gateway.security.tokens import EXPIRED, Claims, TokenError

if TYPE_CHECKING:
    from gateway.config.schema.routes import Route
    from gateway.runtime import Runtime
    from gateway.security.outside import OutsideIssuer
    from gateway.security.tokens import TokenVerifier
    from gateway.state.gcra import Decision
    from gateway.state.identity import UserState
    from gateway.state.stores import Stores

MISSING_TOKEN = Deny.of(
    GatewayError.unauthorized("missing_token", "this route needs a bearer token", False)
)
USER_INACTIVE = Deny.of(
    GatewayError.unauthorized("user_inactive", "the account is deactivated", True)
)
ACCESS_TOKEN = "access_token"  # noqa: S105  # the query parameter's name, not a secret
TOKEN_EXPIRED = Deny.of(GatewayError.unauthorized(*EXPIRED, True))
TOKEN_REVOKED = Deny.of(GatewayError.unauthorized("token_revoked", "the token was revoked", True))


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` header (RFC 6750 §2.1), else None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def query_token(query: str) -> str | None:
    """The `access_token` query parameter (RFC 6750 §2.3), which the gateway accepts on
    WebSocket upgrades only: browsers cannot set headers on one (README "WebSockets")."""
    for pair in query.split("&"):
        name, sep, value = pair.partition("=")
        if sep and name == ACCESS_TOKEN:
            return unquote_plus(value) or None
    return None


def without_query_token(query: str) -> str:
    """`query` without its `access_token` parameters, the rest as the client sent it."""
    if ACCESS_TOKEN not in query:
        return query
    return "&".join(p for p in query.split("&") if p.partition("=")[0] != ACCESS_TOKEN)


def verify(verifier: TokenVerifier, token: str) -> Claims | Deny:
    """The token's claims, or the 401 naming why it cannot be accepted."""
    try:
        return verifier.verify(token)
    except TokenError as exc:
        return Deny.of(GatewayError.unauthorized(exc.code, exc.detail, True))


async def identify(runtime: Runtime, token: str) -> Claims | Principal | Deny:
    """Our token's claims (its account is judged next), an outside issuer's caller
    (complete: nothing of ours is looked up), or the refusal."""
    if runtime.outside:
        iss = claimed_issuer(token)  # unverified: it only picks the keys that verify
        entry = runtime.outside.get(iss) if iss is not None else None
        if entry is not None:
            try:
                claims = await entry.verify(token)
            except TokenError as exc:
                return Deny.of(GatewayError.unauthorized(exc.code, exc.detail, True))
            return judge_outside(entry, claims)
    return verify(runtime.verifier, token)


def judge_outside(entry: OutsideIssuer, claims: OutsideClaims) -> Principal | Deny:
    """The caller of a verified outside token, in the role its claims map to."""
    config = entry.config
    role = mapped_role(config, claims.payload)
    if role is None:
        return Deny(
            "role_not_mapped",
            403,
            f"no role of the token maps to a role of this gateway (auth.issuers "
            f"{config.issuer}, role_claim {', '.join(config.role_claim) or 'not set'})",
        )
    username = f"{claims.sub}@{config.host}"
    return Principal(claims.sub, username, role, claims.jti, float(claims.exp), config.issuer)


def still_valid(principal: Principal, now: float) -> bool:
    """Whether the caller's token has not expired at `now` (epoch seconds). For an outside
    issuer's caller that is all there is to check (its exp bounds it); for ours, the
    identity store is asked as well (`Admission.recheck`)."""
    return now < principal.exp


def judge_account(claims: Claims, revoked: bool, state: UserState | None) -> Principal | Deny:
    """The caller, once the token's revocation and its user's current state are known."""
    if state is None or not state.active:
        return USER_INACTIVE
    if revoked:
        return TOKEN_REVOKED
    return Principal(claims.sub, state.username, state.role, claims.jti, float(claims.exp))


def describe(principal: Principal, own_issuer: str) -> str:
    """What `explain` says about a caller that passed, naming the issuer that verified it."""
    expires = max(0, int(principal.exp - time.time()))
    if principal.issuer is not None:
        return (
            f"verified by outside issuer {principal.issuer} (auth.issuers): "
            f"user {principal.username!r}, mapped to role {principal.role!r}; "
            f"the token expires in {expires} s"
        )
    return (
        f"verified as the gateway's own token (iss {own_issuer!r}): "
        f"user {principal.username!r} ({principal.id}), role {principal.role!r} now; "
        f"the token expires in {expires} s"
    )


class Authenticator:
    """Looks up a verified token's revocation and user in the stores it was given.

    On a rate-limited route with Redis, the Redis gate (gateway/state/gate.py)
    answers the lookup and counts the route's bucket in the same round trip;
    that count is returned for the rate-limit decision to judge."""

    __slots__ = ("_stores",)

    def __init__(self, stores: Stores) -> None:
        self._stores = stores

    async def authenticate(
        self, view: RequestView, runtime: Runtime, token: str, route: Route | None = None
    ) -> tuple[Principal | Deny, Decision | None]:
        """The caller `token` names, and the route's rate-limit count when the gate made it."""
        claims = await identify(runtime, token)
        if not isinstance(claims, Claims):
            return claims, None  # refused, or an outside issuer's caller
        stores = self._stores
        gate = stores.gate
        if gate is not None and route is not None and route.rate_limit is not None:
            limit = route.rate_limit
            answer = await gate.check(
                claims.jti,
                claims.sub,
                bucket(view, route, limit.key, claims.sub),
                runtime.allowed_text.get(route.index, ""),
                limit.rate.limit,
                limit.rate.period,
            )
            if answer is not None:
                return judge_account(claims, answer.revoked, answer.state), answer.decision
        revoked, state = await stores.identity.check(claims.jti, claims.sub)
        return judge_account(claims, revoked, state), None
