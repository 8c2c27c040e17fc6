"""Rate-limit state: GCRA decisions in process, or atomically in Redis for every instance.

`LocalLimiter` keeps one float per key and forgets keys whose bucket is full
again, so memory stays bounded by the active keys. `RedisLimiter` makes each
decision with one Lua script call (read, decide, write: atomic), using the
Redis server's clock so instances never disagree about time. If Redis is
unreachable it follows `server.redis_failure`: "open" decides in process
(logged once), "closed" refuses with 503 until Redis answers again.
"""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.problems import GatewayError
from gateway.state.gcra import Decision, decide, refused
from gateway.state.redis_health import RedisHealth

log = logging.getLogger("gateway.ratelimit")

MAX_KEYS = 200_000  # beyond this, the oldest keys are forgotten (logged)
PRUNE_EVERY = 4096  # decisions between sweeps of keys whose bucket is full again


class LocalLimiter:
    """GCRA in this process: one TAT per key, swept when buckets are full again."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self._tat: dict[str, float] = {}
        self._max_keys = max_keys
        self._since_prune = 0
        self._warned_at = float("-inf")

    def __len__(self) -> int:
        return len(self._tat)

    async def hit(self, key: str, limit: int, period: float, cost: int = 1) -> Decision:
        return self.hit_now(key, limit, period, cost)

    def hit_now(
        self, key: str, limit: int, period: float, cost: int = 1, now: float | None = None
    ) -> Decision:
        now = time.monotonic() if now is None else now
        decision, tat = decide(self._tat.get(key), now, limit, period, cost)
        if decision.allowed:
            self._tat[key] = tat
            self._since_prune += 1
            if self._since_prune >= PRUNE_EVERY or len(self._tat) > self._max_keys:
                self._prune(now)
        return decision

    async def settle(self, key: str, limit: int, period: float, delta: int) -> None:
        self.settle_now(key, limit, period, delta)

    async def peek(self, key: str, limit: int, period: float) -> Decision:
        """The decision a request would get now, without counting it."""
        decision, _ = decide(self._tat.get(key), time.monotonic(), limit, period)
        return decision

    def settle_now(
        self, key: str, limit: int, period: float, delta: int, now: float | None = None
    ) -> None:
        """Move the key's TAT by `delta` units (actual - reserved); a refund stops at now."""
        if delta == 0:
            return
        now = time.monotonic() if now is None else now
        tat = self._tat.get(key)
        start = now if tat is None or tat < now else tat
        new_tat = max(now, start + delta * period / limit)
        if new_tat > now:
            self._tat[key] = new_tat
        else:
            self._tat.pop(key, None)  # a full bucket: the same as no entry

    def _prune(self, now: float) -> None:
        self._since_prune = 0
        # A key whose TAT has passed has a full bucket: the same as no entry.
        self._tat = {k: t for k, t in self._tat.items() if t > now}
        # Over the bound with live keys: drop the oldest down to 90 %, so the
        # next sweep is thousands of decisions away, not one.
        excess = len(self._tat) - (self._max_keys * 9 // 10)
        if len(self._tat) > self._max_keys and excess > 0:
            if now - self._warned_at > 60:
                self._warned_at = now
                log.warning(
                    "rate-limit keys over the bound; forgetting the oldest",
                    extra={"bound": self._max_keys},
                )
            for key in list(self._tat)[:excess]:
                del self._tat[key]


# gcra(key, limit, period (s), cost) returns {allowed, remaining, seconds to
# full, seconds to retry} (floats as strings: Redis would truncate them). The
# same arithmetic as gateway.state.gcra.decide, on the Redis clock. Shared by
# GCRA_LUA and the gate's script (gateway/state/gate.py).
GCRA_FUNCTION = """
local function gcra(key, limit, period, cost)
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
  local interval = period / limit
  local tat = tonumber(redis.call('GET', key))
  if tat == nil or tat < now then tat = now end
  local new_tat = tat + interval * cost
  local allow_at = new_tat - period
  if allow_at > now + 0.000001 then
    return {0, 0, tostring(tat - now), tostring(allow_at - now)}
  end
  redis.call('SET', key, tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000))
  return {1, math.floor((now - allow_at) / interval + 1e-9), tostring(new_tat - now), '0'}
end
"""

# KEYS[1] the bucket; ARGV limit, period (s), cost.
GCRA_LUA = (
    GCRA_FUNCTION
    + "return gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))\n"
)


# KEYS[1] the bucket; ARGV limit, period (s), delta (units: actual - reserved).
# Moves the TAT by delta intervals, never below the Redis clock's now.
SETTLE_LUA = """
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local delta = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + delta * period / limit
if new_tat <= now then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000))
return 1
"""


class RedisLimiter:
    """GCRA in Redis (one script call a decision); `local` decides while Redis is down in
    open mode."""

    def __init__(
        self, redis: Redis, prefix: str, failure: str, health: RedisHealth | None = None
    ) -> None:
        self.local = LocalLimiter()
        self._redis = redis
        self._prefix = f"{prefix}rl:"
        self._script = redis.register_script(GCRA_LUA)
        self._settle_script = redis.register_script(SETTLE_LUA)
        self._failure = failure
        self.health = health or RedisHealth("rate limits")

    def redis_key(self, key: str) -> str:
        """The Redis key of a bucket."""
        return self._prefix + key

    async def hit(self, key: str, limit: int, period: float, cost: int = 1) -> Decision:
        if self.health.available():
            try:
                reply = await self._script(keys=[self._prefix + key], args=[limit, period, cost])
            except (RedisError, OSError) as exc:
                self.health.failed(exc)
            else:
                self.health.succeeded()
                return decision_of(reply, limit)
        if self._failure == "closed":
            raise GatewayError.unavailable(
                "rate limits cannot be checked right now",
                code="rate_limit_unavailable",
                retry_after=1,
            )
        return self.local.hit_now(key, limit, period, cost)

    async def peek(self, key: str, limit: int, period: float) -> Decision:
        """The decision a request would get now (on the Redis clock), without counting it."""
        if self.health.available():
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.time()
                    pipe.get(self.redis_key(key))
                    (seconds, micros), stored = await pipe.execute()
            except (RedisError, OSError) as exc:
                self.health.failed(exc)
            else:
                now = float(seconds) + float(micros) / 1_000_000
                tat = float(_text(stored)) if stored is not None else None
                return decide(tat, now, limit, period)[0]
        return await self.local.peek(key, limit, period)

    async def settle(self, key: str, limit: int, period: float, delta: int) -> None:
        if delta == 0:
            return
        if self.health.available():
            try:
                await self._settle_script(keys=[self._prefix + key], args=[limit, period, delta])
            except (RedisError, OSError) as exc:
                self.health.failed(exc)
            else:
                self.health.succeeded()
                return
        if self._failure == "closed":
            # The response has already been given: nothing to refuse. The
            # charge is lost, as the reservation was made (or not) in Redis.
            return
        self.local.settle_now(key, limit, period, delta)


def decision_of(reply: list[object], limit: int) -> Decision:
    """The Decision of the `gcra` Lua function's reply."""
    allowed, remaining, to_full, to_retry = reply
    full, retry = float(_text(to_full)), float(_text(to_retry))
    if int(_text(allowed)) == 1:
        return Decision(True, limit, int(_text(remaining)), max(0, _ceil(full)), 0)
    return refused(limit, full, retry)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ceil(seconds: float) -> int:
    whole = int(seconds)
    return whole if whole == seconds else whole + 1
