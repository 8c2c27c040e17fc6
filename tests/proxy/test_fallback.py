"""Bounded fallback between models: tried on a refused connection, a 429 or 5xx head and
a timeout before the first byte; never once a byte reached the client; within
max_attempts and fallback_budget; never to a model the caller may not use. The
answering model is named in X-Gateway-Model, charged in the report and in its quota.

Every model is a real demo model server; a failing one fails every call (an
instance default), so the same request succeeds on its fallback.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import MakeGateway, MakeUpstream
from tests.identity import Client, bearer, identity_config, login, make_user
from tests.modelhelp import CountedModel, reports

PATH = "/v1/chat/completions"
REFUSED = "http://127.0.0.1:1"  # nothing listens on port 1
MESSAGES = [{"role": "user", "content": "xxxxxxxxx"}]
COST = 20  # tokens the demo model reports for MESSAGES (see test_token_quota)


def config(models: dict[str, str]) -> str:
    """routes.yaml with one `models:` entry per name: `{url: …, <settings>}`."""
    lines = "".join(f"  {name}: {{{body}}}\n" for name, body in models.items())
    return identity_config() + "models:\n" + lines + "audit: {flush_interval: 1h}\n"


async def signed_in(client: Client, username: str = "fay", role: str = "user") -> dict[str, str]:
    await make_user(client, username, role=role)
    return bearer(await login(client, username))


def chat(**extra: Any) -> dict[str, Any]:
    return {"messages": MESSAGES, **extra}


async def start(upstream: MakeUpstream, name: str, **mode: Any) -> CountedModel:
    return await CountedModel(name, **mode).start(upstream)


async def pair(
    gateway: MakeGateway,
    main_url: str,
    backup_url: str,
    *,
    usage: bool = False,
    main: str = "",
    backup: str = "",
    database_url: str | None = None,
) -> Client:
    """A gateway with model `main` falling back to model `backup` (`main`/`backup`:
    more settings of each, e.g. ", max_attempts: 2")."""
    metered = "usage: openai, " if usage else ""
    return await gateway(
        config(
            {
                "main": f'url: "{main_url}", {metered}roles: [user], fallback: [backup]{main}',
                "backup": f'url: "{backup_url}", {metered}roles: [user]{backup}',
            }
        ),
        database_url=database_url,
    )


@pytest.fixture
async def backup(upstream: MakeUpstream) -> CountedModel:
    return await start(upstream, "backup")


async def test_a_refused_connection_falls_back(
    gateway: MakeGateway, policies: Path, backup: CountedModel, database_url: str
) -> None:
    client = await pair(gateway, REFUSED, backup.url, usage=True, database_url=database_url)
    resp = await client.post("/models/main" + PATH, json=chat(), headers=await signed_in(client))
    assert resp.status == 200
    assert resp.headers["X-Gateway-Model"] == "backup"
    assert (await resp.json())["model"] == "backup"
    assert backup.calls == 1
    [row] = await reports(client)
    # Charged to the model that answered, with both calls counted.
    assert (row["model"], row["status"], row["attempts"]) == ("backup", 200, 2)
    assert row["total_tokens"] == COST


@pytest.mark.parametrize("status", ["503", "500", "429"])
async def test_a_5xx_or_429_answer_falls_back(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream, backup: CountedModel, status: str
) -> None:
    main = await start(upstream, "main", fail=status)
    client = await pair(gateway, main.url, backup.url, usage=True)
    resp = await client.post("/models/main" + PATH, json=chat(), headers=await signed_in(client))
    assert resp.status == 200
    assert resp.headers["X-Gateway-Model"] == "backup"
    assert (main.calls, backup.calls) == (1, 1)
    # The same body reached both models.
    assert main.bodies == backup.bodies


async def test_admin_usage_shows_the_primary_that_fell_back_and_the_backup_that_answered(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream, backup: CountedModel
) -> None:
    main = await start(upstream, "main", fail="503")
    client = await pair(gateway, main.url, backup.url, usage=True)
    resp = await client.post("/models/main" + PATH, json=chat(), headers=await signed_in(client))
    assert resp.headers["X-Gateway-Model"] == "backup"
    [row] = await reports(client)
    assert (row["model"], row["failed_models"]) == ("backup", "main")
    admin = await signed_in(client, "root", role="admin")
    usage = await client.get("/admin/usage?group_by=model", headers=admin)
    assert usage.status == 200
    figures = {
        i["model"]: (i["calls"], i["errors"], i["failed_attempts"], i["fell_back"])
        for i in (await usage.json())["items"]
    }
    # calls, errors, failed attempts, fell back
    assert figures == {"backup": (1, 0, 0, 0), "main": (0, 0, 1, 1)}


async def test_when_every_model_fails_the_last_is_charged_the_error_not_a_fallback(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream
) -> None:
    main = await start(upstream, "main", fail="503")
    backup = await start(upstream, "backup", fail="500")
    client = await pair(gateway, main.url, backup.url)
    resp = await client.post("/models/main" + PATH, json=chat(), headers=await signed_in(client))
    assert (resp.status, resp.headers["X-Gateway-Model"]) == (500, "backup")
    [row] = await reports(client)
    assert (row["model"], row["status"], row["failed_models"]) == ("backup", 500, "main")


async def test_a_client_error_is_the_models_answer(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream, backup: CountedModel
) -> None:
    main = await start(upstream, "main", fail="400")
    client = await pair(gateway, main.url, backup.url)
    resp = await client.post("/models/main" + PATH, json=chat(), headers=await signed_in(client))
    assert resp.status == 400
    assert resp.headers["X-Gateway-Model"] == "main"
    assert backup.calls == 0


async def test_a_slow_first_byte_falls_back(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream, backup: CountedModel
) -> None:
    main = await start(upstream, "main", delay_first=30)
    client = await pair(gateway, main.url, backup.url, main=", first_byte_timeout: 200ms")
    resp = await client.post("/models/main" + PATH, json=chat(), headers=await signed_in(client))
    assert resp.status == 200
    assert resp.headers["X-Gateway-Model"] == "backup"
    assert (main.calls, backup.calls) == (1, 1)


async def test_a_streamed_answer_falls_back_before_its_first_event(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream, backup: CountedModel
) -> None:
    main = await start(upstream, "main", fail="502")
    client = await pair(gateway, main.url, backup.url, usage=True)
    resp = await client.post(
        "/models/main" + PATH, json=chat(stream=True), headers=await signed_in(client)
    )
    assert resp.status == 200
    assert resp.headers["X-Gateway-Model"] == "backup"
    text = await resp.text()
    assert text.rstrip().endswith("data: [DONE]")
    assert '"model":"backup"' in text.replace(" ", "")
    [row] = await reports(client)
    assert (row["model"], row["attempts"], row["total_tokens"]) == ("backup", 2, COST)


async def test_no_fallback_once_bytes_reached_the_client(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream, backup: CountedModel
) -> None:
    main = await start(upstream, "main", fail="midstream")
    client = await pair(gateway, main.url, backup.url, usage=True)
    resp = await client.post(
        "/models/main" + PATH, json=chat(stream=True), headers=await signed_in(client)
    )
    assert resp.status == 200
    assert resp.headers["X-Gateway-Model"] == "main"
    # The stream was cut: the client sees a broken body, never a second model's reply.
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert (main.calls, backup.calls) == (1, 0)


async def test_max_attempts_bounds_the_chain(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream
) -> None:
    first = await start(upstream, "first", fail="503")
    second = await start(upstream, "second", fail="500")
    third = await start(upstream, "third")
    client = await gateway(
        config(
            {
                "first": f'url: "{first.url}", roles: [user], fallback: [second, third],'
                " max_attempts: 2",
                "second": f'url: "{second.url}", roles: [user]',
                "third": f'url: "{third.url}", roles: [user]',
            }
        )
    )
    resp = await client.post("/models/first" + PATH, json=chat(), headers=await signed_in(client))
    # The last model allowed answered, and its answer is relayed as it came.
    assert resp.status == 500
    assert resp.headers["X-Gateway-Model"] == "second"
    assert (await resp.json())["error"]["type"]
    assert (first.calls, second.calls, third.calls) == (1, 1, 0)
    [row] = await reports(client)
    assert (row["model"], row["status"], row["attempts"]) == ("second", 500, 2)


async def test_the_whole_chain_is_tried_in_order(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream
) -> None:
    second = await start(upstream, "second", fail="503")
    third = await start(upstream, "third")
    client = await gateway(
        config(
            {
                "first": f'url: "{REFUSED}", roles: [user], fallback: [second, third]',
                "second": f'url: "{second.url}", roles: [user]',
                "third": f'url: "{third.url}", roles: [user]',
            }
        )
    )
    resp = await client.post("/models/first" + PATH, json=chat(), headers=await signed_in(client))
    assert resp.status == 200
    assert resp.headers["X-Gateway-Model"] == "third"
    assert (second.calls, third.calls) == (1, 1)


async def test_a_model_whose_own_timeout_passes_falls_back(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream, backup: CountedModel
) -> None:
    # Each attempt has its own model's timeout; the chain's budget defaults to the sum
    # of them (1s + 5m), so the primary's timeout is not the whole chain's.
    main = await start(upstream, "main", delay_first=3)
    client = await pair(gateway, main.url, backup.url, main=", timeout: 1s")
    resp = await client.post("/models/main" + PATH, json=chat(), headers=await signed_in(client))
    assert resp.status == 200
    assert resp.headers["X-Gateway-Model"] == "backup"
    assert (await resp.json())["model"] == "backup"
    assert (main.calls, backup.calls) == (1, 1)


async def test_the_time_budget_stops_further_attempts(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream, backup: CountedModel
) -> None:
    main = await start(upstream, "main", delay_first=30)
    # No first_byte_timeout: the budget alone bounds the wait.
    client = await pair(gateway, main.url, backup.url, main=", fallback_budget: 300ms")
    resp = await client.post("/models/main" + PATH, json=chat(), headers=await signed_in(client))
    assert resp.status == 504
    assert resp.content_type == "application/problem+json"
    assert "X-Gateway-Model" not in resp.headers  # no model answered
    assert (main.calls, backup.calls) == (1, 0)


async def test_a_chunked_body_is_replayed_whole(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream, backup: CountedModel
) -> None:
    main = await start(upstream, "main", fail="503")
    client = await pair(gateway, main.url, backup.url)
    payload = b'{"messages": [{"role": "user", "content": "' + b"y" * 50_000 + b'"}]}'

    async def chunks() -> Any:
        for start_at in range(0, len(payload), 4096):
            yield payload[start_at : start_at + 4096]
            await asyncio.sleep(0)

    headers = await signed_in(client) | {"Content-Type": "application/json"}
    resp = await client.post("/models/main" + PATH, data=chunks(), headers=headers)
    assert resp.status == 200
    assert main.bodies == [payload]
    assert backup.bodies == [payload]


async def test_a_fallback_the_role_may_not_use_is_never_tried(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream, backup: CountedModel
) -> None:
    main = await start(upstream, "main", fail="503")
    client = await gateway(
        config(
            {
                "main": f'url: "{main.url}", roles: [user], fallback: [backup]',
                "backup": f'url: "{backup.url}", roles: [admin]',
            }
        )
    )
    resp = await client.post("/models/main" + PATH, json=chat(), headers=await signed_in(client))
    assert resp.status == 503
    assert resp.headers["X-Gateway-Model"] == "main"
    assert backup.calls == 0


async def test_the_answering_model_is_charged_and_the_failed_one_refunded(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream, backup: CountedModel
) -> None:
    main = await start(upstream, "main", fail="503")
    quota = ", token_limit: 30/day"
    client = await pair(gateway, main.url, backup.url, usage=True, main=quota, backup=quota)
    token = await signed_in(client)
    # max_tokens 25 is reserved on each model tried; the demo reply costs 20.
    first = await client.post("/models/main" + PATH, json=chat(max_tokens=25), headers=token)
    assert first.status == 200
    assert first.headers["X-Gateway-Model"] == "backup"
    # main's reservation was given back, so it has room for 25 again; backup
    # was charged 20 of its 30, so its 25 no longer fits and it is passed over.
    second = await client.post("/models/main" + PATH, json=chat(max_tokens=25), headers=token)
    assert second.status == 502
    assert (await second.json())["code"] == "upstream_status"
    assert (main.calls, backup.calls) == (2, 1)


async def test_the_requested_models_own_quota_is_final(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream, backup: CountedModel
) -> None:
    main = await start(upstream, "main")
    client = await pair(gateway, main.url, backup.url, usage=True, main=", token_limit: 30/day")
    token = await signed_in(client)
    first = await client.post("/models/main" + PATH, json=chat(max_tokens=25), headers=token)
    assert first.headers["X-Gateway-Model"] == "main"  # 20 of 30 charged
    resp = await client.post("/models/main" + PATH, json=chat(max_tokens=25), headers=token)
    # A spent quota is the caller's limit, not a model failure: no way around it.
    assert resp.status == 429
    assert (await resp.json())["code"] == "token_quota"
    # Nor is a max_tokens over the quota's whole limit.
    resp = await client.post("/models/main" + PATH, json=chat(max_tokens=31), headers=token)
    assert resp.status == 400
    assert (await resp.json())["code"] == "max_tokens_over_quota"
    assert (main.calls, backup.calls) == (1, 0)


async def test_a_fallback_whose_whole_quota_is_below_max_tokens_is_passed_over(
    gateway: MakeGateway, policies: Path, upstream: MakeUpstream, backup: CountedModel
) -> None:
    main = await start(upstream, "main", fail="503")
    third = await start(upstream, "third")
    client = await gateway(
        config(
            {
                "main": f'url: "{main.url}", usage: openai, roles: [user],'
                " fallback: [backup, third]",
                "backup": f'url: "{backup.url}", usage: openai, roles: [user], token_limit: 10/day',
                "third": f'url: "{third.url}", usage: openai, roles: [user]',
            }
        )
    )
    resp = await client.post(
        "/models/main" + PATH, json=chat(max_tokens=25), headers=await signed_in(client)
    )
    assert resp.status == 200
    assert resp.headers["X-Gateway-Model"] == "third"
    assert (main.calls, backup.calls, third.calls) == (1, 0, 1)


async def test_a_model_without_fallback_names_itself(
    gateway: MakeGateway, policies: Path, backup: CountedModel
) -> None:
    client = await gateway(config({"backup": f'url: "{backup.url}", roles: [user]'}))
    resp = await client.post("/models/backup" + PATH, json=chat(), headers=await signed_in(client))
    assert resp.status == 200
    assert resp.headers["X-Gateway-Model"] == "backup"
