"""Login throttling with Redis gone: this instance's count holds, and the outage is one log line."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.config.units import Rate
from gateway.state.throttle import RedisThrottle
from tests.redisproc import RedisServer


async def test_throttling_goes_on_locally_and_logs_the_outage_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    redis = Redis.from_url(server.url, socket_timeout=1.0, socket_connect_timeout=1.0)
    throttle = RedisThrottle(Rate(3, 60.0), redis, "t:")
    try:
        await throttle.fail("user:una")  # shared while Redis answers
        server.kill()
        caplog.set_level(logging.WARNING, logger="gateway.redis")
        for _ in range(20):  # a burst of failed sign-ins during the outage
            await throttle.fail("user:una")
            await throttle.retry_after("user:una")
        # Refused by this instance's own count (the 3 failures it saw), not let through.
        assert await throttle.retry_after("user:una") > 0
        outage = [r for r in caplog.records if "redis unreachable" in r.getMessage()]
        assert len(outage) == 1
        assert "login throttles" in outage[0].getMessage()

        server.start()  # back: shared again, and said once
        await asyncio.sleep(1.1)  # past the back-off after a failure (RedisHealth.BACKOFF)
        # Redis came back empty (no persistence): its count, not this instance's 3+, answers
        assert await throttle.retry_after("user:una") == 0
        assert throttle.health.degraded is False
        back = [r for r in caplog.records if "reachable again" in r.getMessage()]
        assert len(back) == 1
    finally:
        await redis.aclose()
        server.kill()
