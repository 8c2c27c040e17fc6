"""Token quotas per model and user: checked before the call, settled from reported usage.

The demo model reports prompt_tokens = a quarter of the messages' JSON size and
one completion token per word; the message below makes every call cost exactly
20 tokens (9 prompt + 11 completion) unless `max_tokens` cuts the reply.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.state.limiter import LocalLimiter, RedisLimiter
from tests.conftest import MakeGateway, MakeUpstream
from tests.identity import Client, bearer, identity_config, login, make_user
from tests.modelhelp import CountedModel

CHAT = "/models/chat/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "xxxxxxxxx"}]
COST = 20  # tokens the demo model reports for MESSAGES without max_tokens


@pytest.fixture
async def model(upstream: MakeUpstream) -> CountedModel:
    return await CountedModel().start(upstream)


def quota_config(port: int, quota: str = "60/day") -> str:
    return identity_config() + (
        "models:\n"
        f'  chat: {{url: "http://127.0.0.1:{port}", usage: openai, roles: [user],'
        f" token_limit: {quota}}}\n"
        # nothing listens on port 1: every call fails before a response
        '  dead: {url: "http://127.0.0.1:1", usage: openai, roles: [user],'
        f" token_limit: {quota}}}\n"
        "audit: {flush_interval: 1h}\n"
    )


@pytest.fixture
async def client(
    gateway: MakeGateway, policies: Path, model: CountedModel, database_url: str
) -> Client:
    return await gateway(quota_config(model.port), database_url=database_url)


@pytest.fixture
async def token(client: Client) -> dict[str, str]:
    await make_user(client, "tess")
    return bearer(await login(client, "tess"))


def chat(max_tokens: int | None = None) -> dict[str, object]:
    body: dict[str, object] = {"messages": MESSAGES}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


async def test_a_quota_stops_the_nth_call(client: Client, token: dict[str, str]) -> None:
    first = await client.post(CHAT, json=chat(), headers=token)
    assert first.status == 200
    assert (await first.json())["usage"]["total_tokens"] == COST
    assert first.headers["RateLimit-Limit"] == "60"
    assert first.headers["RateLimit-Remaining"] == "59"  # counted in tokens: 1 reserved
    for _ in range(2):
        assert (await client.post(CHAT, json=chat(), headers=token)).status == 200
    refused = await client.post(CHAT, json=chat(), headers=token)
    assert refused.status == 429
    problem = await refused.json()
    assert problem["code"] == "token_quota"
    assert "chat" in problem["detail"]
    assert refused.headers["RateLimit-Limit"] == "60"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert int(refused.headers["Retry-After"]) >= 1


async def test_quotas_are_per_user(client: Client, token: dict[str, str]) -> None:
    for _ in range(3):
        assert (await client.post(CHAT, json=chat(), headers=token)).status == 200
    assert (await client.post(CHAT, json=chat(), headers=token)).status == 429
    await make_user(client, "uma")
    other = bearer(await login(client, "uma"))
    assert (await client.post(CHAT, json=chat(), headers=other)).status == 200


async def test_max_tokens_is_reserved_before_the_call(
    client: Client, token: dict[str, str], model: CountedModel
) -> None:
    assert (await client.post(CHAT, json=chat(), headers=token)).status == 200  # 40 left
    assert model.calls == 1
    refused = await client.post(CHAT, json=chat(max_tokens=50), headers=token)
    assert refused.status == 429
    assert (await refused.json())["code"] == "token_quota"
    assert model.calls == 1  # refused before it reached the model
    fits = await client.post(CHAT, json=chat(max_tokens=30), headers=token)
    assert fits.status == 200
    assert model.calls == 2


async def test_a_max_tokens_over_the_whole_quota_is_a_400_naming_the_limit(
    client: Client, token: dict[str, str], model: CountedModel
) -> None:
    refused = await client.post(CHAT, json=chat(max_tokens=100), headers=token)
    assert refused.status == 400
    assert refused.content_type == "application/problem+json"
    problem = await refused.json()
    assert problem["code"] == "max_tokens_over_quota"
    assert problem["detail"] == (
        "max_tokens 100 is over this quota's whole limit of 60 tokens per 1d"
    )
    assert "Retry-After" not in refused.headers  # waiting would never help
    assert model.calls == 0
    # nothing was reserved: the whole quota is still there
    assert (await client.post(CHAT, json=chat(max_tokens=60), headers=token)).status == 200


def assert_retry_within_reset(resp: aiohttp.ClientResponse) -> None:
    """Retry-After <= RateLimit-Reset + 1, both whole seconds from now."""
    retry, reset = int(resp.headers["Retry-After"]), int(resp.headers["RateLimit-Reset"])
    assert 1 <= retry <= reset + 1, (retry, reset)


@pytest.mark.parametrize("redis", [False, True], ids=["in-process", "redis"])
async def test_every_429_says_retry_after_within_ratelimit_reset(
    gateway: MakeGateway,
    policies: Path,
    model: CountedModel,
    redis: bool,
    request: pytest.FixtureRequest,
) -> None:
    shared = {}
    if redis:
        url = request.getfixturevalue("redis_url")
        shared = {"redis_url": url, "redis_prefix": request.getfixturevalue("redis_prefix")}
    limited_model = f'  limited: {{url: "http://127.0.0.1:{model.port}", rate_limit: 2/min}}\n'
    text = quota_config(model.port, "60/day").replace("  dead:", limited_model + "  dead:")
    client = await gateway(text, **shared)
    await make_user(client, "rita")
    token = bearer(await login(client, "rita"))
    # A token quota 429 for a call that reserves max_tokens (fits the limit, not now) and
    # for one that reserves a single token, after usage beyond the reservations.
    assert (await client.post(CHAT, json=chat(), headers=token)).status == 200  # 20 used
    for max_tokens in (50, 41, None):
        if max_tokens is None:
            for _ in range(2):
                assert (await client.post(CHAT, json=chat(), headers=token)).status == 200
        refused = await client.post(CHAT, json=chat(max_tokens), headers=token)
        assert refused.status == 429
        assert (await refused.json())["code"] == "token_quota"
        assert_retry_within_reset(refused)
    # The request rate limit of a model route.
    limited = "/models/limited/v1/chat/completions"
    statuses = []
    for _ in range(3):
        resp = await client.post(limited, json=chat(), headers=token)
        statuses.append(resp.status)
    assert statuses == [200, 200, 429]
    assert (await resp.json())["code"] == "rate_limited"
    assert_retry_within_reset(resp)


async def test_an_over_reservation_is_refunded(client: Client, token: dict[str, str]) -> None:
    # Each call reserves 40 but uses 20: without settling, the second would be refused.
    statuses = [
        (await client.post(CHAT, json=chat(max_tokens=40), headers=token)).status for _ in range(3)
    ]
    assert statuses == [200, 200, 429]  # 20 + 20 used, 40 more do not fit in 60
    # a small call still fits in the 20 left
    assert (await client.post(CHAT, json=chat(), headers=token)).status == 200


async def test_unknown_usage_charges_the_reservation(client: Client, token: dict[str, str]) -> None:
    for _ in range(2):
        resp = await client.post(CHAT + "?usage=0", json=chat(max_tokens=30), headers=token)
        assert resp.status == 200
    # 30 + 30 charged (had the real 20 each been charged, 20 would be left)
    refused = await client.post(CHAT, json=chat(), headers=token)
    assert refused.status == 429
    assert (await refused.json())["code"] == "token_quota"


async def test_a_failed_call_refunds_its_reservation(client: Client, token: dict[str, str]) -> None:
    statuses = [
        (await client.post("/models/dead/v1/chat/completions", json=chat(50), headers=token)).status
        for _ in range(3)
    ]
    assert statuses == [502, 502, 502]  # never 429: nothing was charged


async def test_concurrent_calls_cannot_overshoot_by_more_than_their_reservations(
    client: Client, token: dict[str, str], model: CountedModel
) -> None:
    results = await asyncio.gather(
        *(client.post(CHAT, json=chat(max_tokens=20), headers=token) for _ in range(6))
    )
    assert sorted(r.status for r in results).count(200) == 3  # 3 x 20 reserved = 60
    assert model.calls == 3


async def test_two_instances_on_redis_share_one_quota(
    gateway: MakeGateway,
    policies: Path,
    model: CountedModel,
    redis_url: str,
    redis_prefix: str,
) -> None:
    text = quota_config(model.port)
    a = await gateway(text, redis_url=redis_url, redis_prefix=redis_prefix)
    b = await gateway(text, redis_url=redis_url, redis_prefix=redis_prefix)
    await make_user(a, "rhea")
    token = bearer(await login(a, "rhea"))
    statuses = [
        (await (a if i % 2 == 0 else b).post(CHAT, json=chat(), headers=token)).status
        for i in range(4)
    ]
    assert statuses == [200, 200, 200, 429]
    # settling is shared too: a reservation refunded on one is usable on the other
    c = await gateway(text, redis_url=redis_url, redis_prefix=redis_prefix + "c:")
    d = await gateway(text, redis_url=redis_url, redis_prefix=redis_prefix + "c:")
    token = bearer(await login(c, "rhea"))
    assert (await c.post(CHAT, json=chat(max_tokens=40), headers=token)).status == 200
    assert (await d.post(CHAT, json=chat(max_tokens=40), headers=token)).status == 200
    assert (await c.post(CHAT, json=chat(max_tokens=40), headers=token)).status == 429


def test_settle_moves_the_tat_and_a_refund_stops_at_now() -> None:
    limiter = LocalLimiter()
    now = 1000.0  # a fixed clock: the arithmetic, not the machine's speed, is tested
    assert limiter.hit_now("k", 60, 60.0, cost=50, now=now).remaining == 10
    limiter.settle_now("k", 60, 60.0, -30, now=now)  # used 20 of the 50 reserved
    assert limiter.hit_now("k", 60, 60.0, cost=40, now=now).allowed
    assert not limiter.hit_now("k", 60, 60.0, cost=1, now=now).allowed
    limiter.settle_now("k", 60, 60.0, -1000, now=now)  # a refund past the charge: a full bucket
    assert limiter.hit_now("k", 60, 60.0, cost=60, now=now).remaining == 0
    limiter.settle_now("k", 60, 60.0, 10, now=now)  # over the quota: debt delays the next call
    assert not limiter.hit_now("k", 60, 60.0, cost=1, now=now).allowed


async def test_redis_settle_is_the_same_arithmetic(redis_url: str, redis_prefix: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        limiter = RedisLimiter(redis, redis_prefix, "open")
        assert (await limiter.hit("k", 60, 60.0, cost=50)).remaining == 10
        await limiter.settle("k", 60, 60.0, -30)
        assert (await limiter.hit("k", 60, 60.0, cost=40)).allowed
        assert not (await limiter.hit("k", 60, 60.0, cost=1)).allowed
        await limiter.settle("k", 60, 60.0, -1000)
        assert (await limiter.hit("k", 60, 60.0, cost=60)).remaining == 0
    finally:
        await redis.aclose()
