"""The request path's pipelined Redis connection, against the real Redis: replies
matched to callers under concurrency, scripts loaded when Redis lost them, the
database of the URL, a lost connection reopened, timeouts that leave the order
intact."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.state.pipelined import PipelinedRedis
from tests.processes import free_port


@pytest.fixture
async def plain(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_concurrent_calls_get_their_own_replies(redis_url: str, redis_prefix: str) -> None:
    fast = PipelinedRedis(redis_url)
    try:
        keys = [f"{redis_prefix}k{i}" for i in range(300)]
        await asyncio.gather(*(fast.call("SET", key, f"v{i}") for i, key in enumerate(keys)))
        values = await asyncio.gather(*(fast.call("GET", key) for key in keys))
        assert values == [f"v{i}".encode() for i in range(300)]
        with pytest.raises(ResponseError):
            await fast.call("INCR", keys[0])  # not an integer: an error reply, for this caller
        assert await fast.call("GET", keys[1]) == b"v1"  # and the next one is in step
    finally:
        await fast.close()


async def test_a_script_redis_does_not_know_is_loaded(redis_url: str, redis_prefix: str) -> None:
    fast = PipelinedRedis(redis_url)
    try:
        # A script of this test's own (its text names the prefix): never seen by Redis,
        # so the first EVALSHA gets NOSCRIPT and the script is loaded. (No SCRIPT
        # FLUSH: other tests share this Redis.)
        sha = fast.script(f"-- {redis_prefix}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])")
        key = f"{redis_prefix}n"
        assert await fast.evalsha(sha, [key], [2]) == 2
        assert await fast.evalsha(sha, [key], [3]) == 5
    finally:
        await fast.close()


async def test_the_urls_database_is_used(redis_url: str, redis_prefix: str) -> None:
    other = redis_url.rsplit("/", 1)[0] + "/3"
    fast = PipelinedRedis(other)
    check = Redis.from_url(other)
    try:
        await fast.call("SET", f"{redis_prefix}db", "three")
        assert await check.get(f"{redis_prefix}db") == b"three"
        await check.delete(f"{redis_prefix}db")
    finally:
        await fast.close()
        await check.aclose()


async def test_a_lost_connection_fails_its_callers_then_reopens(
    redis_url: str, redis_prefix: str, plain: Redis
) -> None:
    fast = PipelinedRedis(redis_url, timeout=10.0)
    try:
        await fast.call("CLIENT", "SETNAME", f"{redis_prefix}fast")
        first_id = await fast.call("CLIENT", "ID")
        # A call in flight (BLPOP waits on the server) when the connection is killed.
        waiting = asyncio.create_task(fast.call("BLPOP", f"{redis_prefix}empty", 5))
        await asyncio.sleep(0.1)
        await plain.execute_command("CLIENT", "KILL", "ID", first_id)
        with pytest.raises(RedisConnectionError):
            await waiting
        assert await fast.call("PING") == b"PONG"  # on a new connection
        assert await fast.call("CLIENT", "ID") != first_id
    finally:
        await fast.close()


async def test_a_timeout_keeps_later_replies_in_step(
    redis_url: str, redis_prefix: str, plain: Redis
) -> None:
    fast = PipelinedRedis(redis_url, timeout=0.05)
    try:
        key = f"{redis_prefix}t"
        await fast.call("SET", key, "after")
        await plain.execute_command("CLIENT", "PAUSE", "200", "ALL")
        with pytest.raises(RedisTimeoutError):
            await fast.call("GET", key)
        await asyncio.sleep(0.3)  # the pause is over; the late reply arrives and is dropped
        assert await fast.call("GET", key) == b"after"
        assert await fast.call("PING") == b"PONG"
    finally:
        await fast.close()


async def test_nothing_listening_is_a_redis_error() -> None:
    fast = PipelinedRedis(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
    try:
        with pytest.raises(RedisError):
            await fast.call("PING")
    finally:
        await fast.close()


def test_on_uvloop_as_the_gateway_runs(redis_url: str, redis_prefix: str) -> None:
    # `gateway serve` runs on uvloop, whose transports are not asyncio's classes.
    import uvloop

    async def scenario() -> list[Any]:
        fast = PipelinedRedis(redis_url)
        try:
            await fast.call("SET", f"{redis_prefix}uv", "loop")
            return list(
                await asyncio.gather(*(fast.call("GET", f"{redis_prefix}uv") for _ in range(50)))
            )
        finally:
            await fast.close()

    assert uvloop.run(scenario()) == [b"loop"] * 50
