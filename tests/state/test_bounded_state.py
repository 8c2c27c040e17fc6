"""State kept per user or per token stays bounded: 100,000 distinct users leave
nothing behind once their entries have expired (in process), and every
rate-limit and revocation key written to Redis carries an expiry. (User states
are one entry per user of the database, in process and in Redis.)"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from gateway.state.identity import PURGE_EVERY, LocalIdentity, RedisIdentity
from gateway.state.limiter import PRUNE_EVERY, LocalLimiter, RedisLimiter

USERS = 100_000


def test_rate_limit_entries_expire_with_their_buckets() -> None:
    limiter = LocalLimiter()
    for i in range(USERS):
        assert limiter.hit_now(f"/r|user:{i}", 60, 60.0, now=0.0).allowed
    assert len(limiter) == USERS  # all of them active: nothing may be forgotten yet
    # A minute on, every one of those buckets is full again: the same as no entry.
    for i in range(PRUNE_EVERY):
        limiter.hit_now(f"/r|user:late-{i}", 60, 60.0, now=61.0)
    assert len(limiter) <= PRUNE_EVERY


async def test_revocations_expire_with_their_tokens() -> None:
    identity = LocalIdentity()
    now = time.time()
    for i in range(USERS):
        # all but the last 100 tokens have expired: a revocation is only kept while
        # the token it revokes could still be presented
        expiry = now + 3600 if i >= USERS - 100 else now - 1
        await identity.revoke(f"jti-{i}", expiry)
    assert len(identity.revoked) < PURGE_EVERY + 100
    assert all(f"jti-{i}" in identity.revoked for i in range(USERS - 100, USERS))


async def test_every_redis_key_expires(redis_url: str, redis_prefix: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        limiter = RedisLimiter(redis, redis_prefix, "open")
        identity = RedisIdentity(redis, redis_prefix)
        for i in range(50):
            await limiter.hit(f"/r|user:{i}", 60, 60.0)
            await identity.revoke(f"jti-{i}", time.time() + 900)
        keys = [k async for k in redis.scan_iter(match=f"{redis_prefix}*")]
        assert len(keys) == 100
        ttls = [await redis.pttl(k) for k in keys]
        assert all(0 < ttl <= 901_000 for ttl in ttls), ttls
    finally:
        await redis.aclose()
