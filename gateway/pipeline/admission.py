"""Authentication, policy and the rate limit, as steps over a routed request's context.

Each step asks its decision module and raises the `Deny`'s problem; passing,
it leaves what it learnt in the context (the caller, the RateLimit-* headers).
The middleware stages (gateway/middleware/) each call one step; the lean
server path (gateway/server/lean.py) calls `admit`, the three in the chain's
order. So both ways through judge a request with the same code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.pipeline import policy, rate_limit
from gateway.pipeline.authentication import (
    MISSING_TOKEN,
    TOKEN_EXPIRED,
    TOKEN_REVOKED,
    USER_INACTIVE,
    Authenticator,
    bearer_token,
    query_token,
    still_valid,
)
from gateway.pipeline.verdict import Deny

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.state.stores import Stores


class Admission:
    """The three steps, with the stores and the authenticator the chain was built with."""

    __slots__ = ("_authenticator", "_stores")

    def __init__(self, stores: Stores) -> None:
        self._stores = stores
        self._authenticator = Authenticator(stores)

    async def authenticate(self, ctx: RequestContext) -> None:
        """Routes without `auth: none` need a valid, unrevoked token of an active user, or a
        valid token of an outside issuer whose role maps (401; 403 role_not_mapped)."""
        route = ctx.route
        if route is None or route.auth == "none":
            return
        token = bearer_token(ctx.headers.get("Authorization"))
        if token is None and ctx.upgrade:
            token = query_token(ctx.query)  # a browser's WebSocket cannot send headers
        if token is None:
            raise MISSING_TOKEN.error()
        runtime = ctx.runtime
        assert runtime is not None  # set when the request was routed
        caller, ctx.rate_counted = await self._authenticator.authenticate(
            ctx, runtime, token, route
        )
        if isinstance(caller, Deny):
            raise caller.error()
        ctx.user = caller

    @staticmethod
    def authorize(ctx: RequestContext) -> None:
        """The caller's role must pass the route's `roles` (403)."""
        route, user, runtime = ctx.route, ctx.user, ctx.runtime
        if route is None or user is None or runtime is None:
            return  # auth: none routes have no caller to judge
        verdict = policy.decide(
            user.role, runtime.allowed.get(route.index), route.path, route.roles
        )
        if isinstance(verdict, Deny):
            raise verdict.error()

    async def limit(self, ctx: RequestContext) -> None:
        """The route's GCRA bucket for this caller (429), counted in the limiter unless the
        Redis gate counted it during authentication; sets the RateLimit-* headers."""
        route = ctx.route
        if route is None or route.rate_limit is None:
            return
        limit = route.rate_limit
        counted = ctx.rate_counted
        if counted is None:
            rate = limit.rate
            counted = await self._stores.limiter.hit(
                rate_limit.bucket(ctx, route, limit.key), rate.limit, rate.period
            )
        verdict = rate_limit.decide(route, limit, counted)
        ctx.rate_headers = verdict.headers
        if isinstance(verdict, Deny):
            metrics = self._stores.metrics
            if metrics is not None:
                metrics.rate_limited(route.path)
            raise verdict.error()

    async def recheck(self, ctx: RequestContext, now: float) -> Deny | None:
        """The caller of an open connection (a WebSocket) judged again, `now` in epoch
        seconds: its token expired or was revoked, its user deactivated, or its role no
        longer passes the route. None: it may stay. An outside issuer's caller is judged by
        its token's exp and its mapped role only: it is not in our users or revocations."""
        user, route, runtime = ctx.user, ctx.route, ctx.runtime
        if user is None or route is None or runtime is None:
            return None  # auth: none: nobody to judge
        if not still_valid(user, now):
            return TOKEN_EXPIRED
        role = user.role
        if user.issuer is None:
            revoked, state = await self._stores.identity.check(user.jti, user.id)
            if state is None or not state.active:
                return USER_INACTIVE
            if revoked:
                return TOKEN_REVOKED
            role = state.role
        verdict = policy.decide(role, runtime.allowed.get(route.index), route.path, route.roles)
        return verdict if isinstance(verdict, Deny) else None

    async def admit(self, ctx: RequestContext) -> None:
        """All three, in order: refused callers never spend anyone's rate limit."""
        await self.authenticate(ctx)
        self.authorize(ctx)
        await self.limit(ctx)
