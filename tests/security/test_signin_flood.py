"""Sign-in cannot starve the gateway: password hashing runs in a bounded pool, 503 busy beyond it.

The pool's threads run below the event loop's priority, a flood of valid
logins beyond the pool and its queue is answered 503 `busy` with
Retry-After (never 500), proxied routes keep answering meanwhile, and once
the flood is over sign-ins work again. The p99 figure lives in
bench/login_flood.py; these tests assert behaviour only.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.problems import PROBLEM_CONTENT_TYPE, GatewayError
from gateway.security.hashpool import WORKER_NICENESS, HashPool
from gateway.services import SERVICES
from tests.conftest import MakeGateway
from tests.identity import CHEAP_HASHING, PASSWORD, identity_config, login, make_user
from tests.processes import create_user, free_port, shipped_config, start_gateway, stop

LOGIN = {"username": "alice", "password": PASSWORD}


def pool_config(port: int, hashing: str) -> str:
    """identity_config's routes (registration on, /public/** proxied) with `hashing`."""
    return identity_config(port).replace(CHEAP_HASHING, f"password_hashing: {hashing}")


async def busy_answer(response: aiohttp.ClientResponse) -> None:
    """A 503 `busy` problem with Retry-After: 1, as every refusal of a full pool is."""
    body = await response.json(content_type=None)
    assert response.status == 503, body
    assert response.content_type == PROBLEM_CONTENT_TYPE
    assert body["code"] == "busy"
    assert response.headers["Retry-After"] == "1"


async def test_logins_beyond_a_full_pool_get_busy_and_proxying_goes_on(
    gateway: MakeGateway, policies: Path, echo: TestServer
) -> None:
    hashing = "{time_cost: 1, memory_cost: 64KiB, parallelism: 1, workers: 1, queue: 2}"
    client = await gateway(pool_config(echo.port, hashing))
    await make_user(client, "alice")
    pool = client.app[SERVICES].passwords.pool
    assert (pool.workers, pool.queue) == (1, 2)  # the config reached the pool

    # A hash that takes as long as the test wants holds the only worker, as a
    # slow argon2 would: of the logins that follow, two wait in the queue and
    # the rest are refused at once.
    release = threading.Event()
    holder = asyncio.ensure_future(pool.run(release.wait, 30))
    try:
        attempts = [asyncio.ensure_future(client.post("/auth/login", json=LOGIN)) for _ in range(8)]
        finished, waiting = await asyncio.wait(attempts, timeout=10, return_when="FIRST_COMPLETED")
        while len(finished) < 6 and waiting:
            more, waiting = await asyncio.wait(waiting, timeout=10, return_when="FIRST_COMPLETED")
            assert more, "the refusals did not come at once"
            finished |= more
        assert len(finished) == 6
        assert len(waiting) == 2
        for attempt in finished:
            await busy_answer(attempt.result())
        # The event loop is free while the pool is full: a proxied route answers.
        proxied = await client.get("/public/during-the-flood")
        assert proxied.status == 200
        assert (await proxied.json())["path"] == "/during-the-flood"
    finally:
        release.set()
        await holder
    for attempt in await asyncio.gather(*waiting):
        assert attempt.status == 200, await attempt.text()  # the queued ones were served
    assert pool.pending == 0
    await login(client, "alice")  # and sign-in works again


async def test_registration_and_password_change_are_refused_busy_too(
    gateway: MakeGateway, policies: Path, echo: TestServer
) -> None:
    hashing = "{time_cost: 1, memory_cost: 64KiB, parallelism: 1, workers: 1, queue: 0}"
    client = await gateway(pool_config(echo.port, hashing))
    await make_user(client, "alice")
    token = (await login(client, "alice"))["access_token"]
    pool = client.app[SERVICES].passwords.pool
    release = threading.Event()
    holder = asyncio.ensure_future(pool.run(release.wait, 30))
    try:
        new = {"username": "bob", "password": "another long password"}
        await busy_answer(await client.post("/auth/register", json=new))
        change = {"current_password": PASSWORD, "new_password": "a brand new password"}
        auth = {"Authorization": f"Bearer {token}"}
        await busy_answer(await client.post("/users/me/password", json=change, headers=auth))
    finally:
        release.set()
        await holder
    # nothing was half done: bob does not exist, alice's password is unchanged
    assert await client.app[SERVICES].users.by_username("bob") is None
    await login(client, "alice")


async def test_a_real_login_flood_gets_200_or_busy_never_an_error(
    tmp_path: Path, policies: Path, echo: TestServer
) -> None:
    """`gateway serve` with the shipped argon2 cost and a pool of one thread and one
    waiting job: a burst of valid logins is served as far as the pool goes, the
    rest is 503 busy, a proxied route answers throughout, and nothing is a 500."""
    port = free_port()
    config = tmp_path / "routes.yaml"
    hashing = "{workers: 1, queue: 1}"  # argon2 itself at the shipped defaults
    config.write_text(pool_config(echo.port, hashing) + f"server: {{listen: 127.0.0.1:{port}}}\n")
    create_user(config, "alice", "user", PASSWORD)
    log = tmp_path / "gateway.log"
    process = start_gateway(config, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def sign_in() -> tuple[int, Any]:
                async with session.post(f"{base}/auth/login", json=LOGIN) as response:
                    if response.status == 503:
                        await busy_answer(response)
                    return response.status, await response.json(content_type=None)

            async def proxied() -> int:
                async with session.get(f"{base}/public/x") as response:
                    return response.status

            flood = [asyncio.ensure_future(sign_in()) for _ in range(40)]
            side = [await proxied() for _ in range(5)]
            answers = await asyncio.wait_for(asyncio.gather(*flood), timeout=60)
            statuses = [status for status, _ in answers]
            assert set(statuses) <= {200, 503}, answers
            assert 200 in statuses, statuses
            assert 503 in statuses, statuses
            assert side == [200] * 5
            status, _ = await sign_in()  # the flood is over: sign-in works again
            assert status == 200
    finally:
        stop(process)
    assert '"level":"error"' not in log.read_text().replace(" ", "")


async def test_a_caller_that_gives_up_frees_its_slot_only_when_its_work_ends() -> None:
    pool = HashPool(workers=1, queue=1)
    started, release = threading.Event(), threading.Event()

    def slow() -> bool:
        started.set()
        return release.wait(30)

    try:
        running = asyncio.ensure_future(pool.run(slow))
        queued = asyncio.ensure_future(pool.run(slow))
        assert await asyncio.to_thread(started.wait, 10)
        assert pool.pending == 2
        with pytest.raises(GatewayError) as refused:
            await pool.run(slow)
        assert (refused.value.status, refused.value.code) == (503, "busy")
        # The running hash cannot be stopped: its slot stays taken until it ends,
        # or clients that hang up would let unbounded work pile up behind it.
        running.cancel()
        await asyncio.sleep(0.05)
        assert pool.pending == 2
        # A job still waiting is dropped with its caller, and frees its slot.
        queued.cancel()
        for _ in range(100):
            if pool.pending == 1:
                break
            await asyncio.sleep(0.01)
        assert pool.pending == 1
        release.set()
        for _ in range(500):
            if pool.pending == 0:
                break
            await asyncio.sleep(0.01)
        assert pool.pending == 0
        assert await pool.run(lambda: "done") == "done"
    finally:
        release.set()
        pool.close()


async def test_hash_workers_run_below_the_event_loop_and_leave_it_a_core() -> None:
    pool = HashPool(workers=1, queue=0)

    def scheduling() -> tuple[int, set[int]]:
        tid = threading.get_native_id()
        return os.getpriority(os.PRIO_PROCESS, tid), os.sched_getaffinity(tid)

    try:
        loop_niceness, loop_cpus = scheduling()
        worker_niceness, worker_cpus = await pool.run(scheduling)
    finally:
        pool.close()
    assert scheduling() == (loop_niceness, loop_cpus)  # only the worker thread changed
    # An unprivileged process cannot lower a niceness it already has above 10.
    assert worker_niceness == max(WORKER_NICENESS, loop_niceness)
    if len(loop_cpus) > 1:  # argon2's lane threads inherit this: one CPU stays free of them
        assert worker_cpus == loop_cpus - {min(loop_cpus)}
    else:
        assert worker_cpus == loop_cpus


async def test_the_shipped_config_rate_limits_sign_in_and_sign_up_per_address(
    tmp_path: Path,
) -> None:
    """The shipped routes.yaml: one address gets 10 sign-in and 10 sign-up attempts
    a minute; a burst beyond that is 429 `rate_limited` before any hashing."""
    port = free_port()
    process = start_gateway(shipped_config(tmp_path, port), port, tmp_path / "gateway.log")
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/auth/login", "/auth/register"):
                codes = []
                for _ in range(12):
                    async with session.post(f"{base}{path}", json=LOGIN) as response:
                        body = await response.json(content_type=None)
                        codes.append(body.get("code"))
                        if body.get("code") == "rate_limited":
                            assert response.status == 429
                            assert int(response.headers["Retry-After"]) >= 1
                            assert response.headers["RateLimit-Limit"].startswith("10")
                # a wrong password (login) or closed registration answers the first ten
                assert "rate_limited" not in codes[:10], (path, codes)
                assert codes[10:] == ["rate_limited", "rate_limited"], (path, codes)
    finally:
        stop(process)
