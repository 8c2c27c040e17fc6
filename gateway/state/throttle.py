"""Failed-login throttling: too many failures for one username or one IP → 429.

A sliding log of failure times per key (the last `limit` within `period`),
in memory or in a Redis sorted set, so the window has no double burst at a window boundary.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import deque
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.config.units import Rate
from gateway.state.redis_health import RedisHealth

MAX_KEYS = 100_000  # in-memory keys kept; the oldest are dropped beyond it


class LoginThrottle(Protocol):
    """Failed sign-ins counted per username and per client IP (auth.login_failures)."""

    rate: Rate

    async def retry_after(self, key: str) -> int: ...

    async def fail(self, key: str) -> None: ...

    async def clear(self, key: str) -> None: ...


class LocalThrottle:
    """The sliding logs in this process."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._failures: dict[str, deque[float]] = {}

    async def retry_after(self, key: str) -> int:
        """Seconds until `key` may try again; 0 when it may now."""
        window = self._failures.get(key)
        if not window:
            return 0
        moment = time.time()
        while window and window[0] <= moment - self.rate.period:
            window.popleft()
        if len(window) < self.rate.limit:
            return 0
        return max(1, math.ceil(window[0] + self.rate.period - moment))

    async def fail(self, key: str) -> None:
        window = self._failures.get(key)
        if window is None:
            if len(self._failures) >= MAX_KEYS:
                self._failures.pop(next(iter(self._failures)))
            window = self._failures[key] = deque(maxlen=self.rate.limit)
        window.append(time.time())

    async def clear(self, key: str) -> None:
        self._failures.pop(key, None)


class RedisThrottle:
    """The same, shared by every instance; while Redis fails, this instance's own count
    (the outage and the recovery are logged once each, not per sign-in)."""

    def __init__(self, rate: Rate, redis: Redis, prefix: str) -> None:
        self.rate = rate
        self.local = LocalThrottle(rate)  # what counts while Redis fails
        self._redis = redis
        self._prefix = prefix
        self.health = RedisHealth("login throttles")

    def _key(self, key: str) -> str:
        return f"{self._prefix}login:{key}"

    async def retry_after(self, key: str) -> int:
        if not self.health.available():
            return await self.local.retry_after(key)
        moment = time.time()
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(self._key(key), 0, moment - self.rate.period)
                pipe.zrange(self._key(key), 0, 0, withscores=True)
                pipe.zcard(self._key(key))
                _, oldest, count = await pipe.execute()
        except (RedisError, OSError) as exc:
            self.health.failed(exc)
            return await self.local.retry_after(key)
        self.health.succeeded()
        if count < self.rate.limit or not oldest:
            return 0
        return max(1, math.ceil(float(oldest[0][1]) + self.rate.period - moment))

    async def fail(self, key: str) -> None:
        await self.local.fail(key)
        if not self.health.available():
            return
        moment = time.time()
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zadd(self._key(key), {uuid.uuid4().hex: moment})
                pipe.zremrangebyrank(self._key(key), 0, -self.rate.limit - 1)
                pipe.expire(self._key(key), math.ceil(self.rate.period))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self.health.failed(exc)

    async def clear(self, key: str) -> None:
        await self.local.clear(key)
        if not self.health.available():
            return
        try:
            await self._redis.delete(self._key(key))
        except (RedisError, OSError) as exc:
            self.health.failed(exc)
