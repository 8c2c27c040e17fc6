"""One Redis round trip per request: revocation, user state, role and rate limit together.

With Redis, the authentication stage needs the token's revocation and its
user's current state, and the rate-limit stage a GCRA decision: two round
trips, each paying redis-py's client cost. `RedisGate` asks all of it in one
Lua call, which also applies the route's role check before it counts, so a
request refused for its token, its account or its role never uses up its
caller's rate limit (the same order as the chain: authentication, policy,
rate limit). The authentication stage calls it on routes with a rate limit;
the rate-limit stage then uses the decision it left in the context.

Whenever the gate cannot answer (Redis backing off after a failure, a token
this instance revoked itself), it returns None and the stages ask the usual
way, with the usual `server.redis_failure` behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import RedisError

from gateway.state.gcra import Decision
from gateway.state.identity import RedisIdentity, UserState
from gateway.state.limiter import GCRA_FUNCTION, RedisLimiter, decision_of
from gateway.state.pipelined import PipelinedRedis

# KEYS: the token's revocation, the user's state, the rate-limit bucket.
# ARGV: the roles that pass the route as ",a,b," ("" for any role), the limit,
# the period in seconds. Returns {revoked, state ("" when Redis has none)},
# followed by the gcra reply when the request passed identity and role.
GATE_LUA = (
    GCRA_FUNCTION
    + """
local revoked = redis.call('EXISTS', KEYS[1])
local state = redis.call('GET', KEYS[2])
if revoked == 1 or not state then return {revoked, state or ''} end
local role, active = string.match(state, '^([^\\t]*)\\t([^\\t]*)')
if active ~= '1' then return {revoked, state} end
if ARGV[1] ~= '' and not string.find(ARGV[1], ',' .. role .. ',', 1, true) then
  return {revoked, state}
end
local decision = gcra(KEYS[3], tonumber(ARGV[2]), tonumber(ARGV[3]), 1)
return {revoked, state, decision[1], decision[2], decision[3], decision[4]}
"""
)


@dataclass(frozen=True, slots=True)
class GateAnswer:
    revoked: bool
    state: UserState | None
    decision: Decision | None  # None: not counted (refused before the limit, or no state)


class RedisGate:
    """The call, on its own pipelined connection (gateway/state/pipelined.py)."""

    def __init__(
        self, redis: PipelinedRedis, identity: RedisIdentity, limiter: RedisLimiter
    ) -> None:
        self._redis = redis
        self._sha = redis.script(GATE_LUA)
        self._identity = identity
        self._limiter = limiter

    async def close(self) -> None:
        await self._redis.close()

    async def check(
        self, jti: str, user_id: str, bucket: str, roles: str, limit: int, period: float
    ) -> GateAnswer | None:
        """Everything about one request in one call; None: ask the usual way."""
        identity, limiter = self._identity, self._limiter
        if identity.revoked_here(jti):
            return None
        if not (identity.health.available() and limiter.health.available()):
            return None
        revocation, user = identity.keys(jti, user_id)
        try:
            reply = await self._redis.evalsha(
                self._sha, [revocation, user, limiter.redis_key(bucket)], [roles, limit, period]
            )
        except (RedisError, OSError) as exc:
            identity.health.failed(exc)
            limiter.health.failed(exc)
            return None
        identity.health.succeeded()
        limiter.health.succeeded()
        encoded = reply[1]
        state = await identity.state_from(user_id, encoded if encoded else None)
        decision = decision_of(reply[2:], limit) if len(reply) > 2 else None
        return GateAnswer(bool(reply[0]), state, decision)
