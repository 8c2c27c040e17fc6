"""Several targets per upstream: weights, least-outstanding, health checks, ejection, retries.

The balancer's arithmetic is tested on its own with a fake clock; everything
else through the real gateway against real upstream servers on loopback.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.config.schema.upstreams import (
    HealthCheckConfig,
    PassiveConfig,
    RetryBudgetConfig,
    UpstreamConfig,
    UpstreamTarget,
)
from gateway.proxy.balancer import Balancer, RetryBudget, TargetState
from gateway.runtime import HOLDER
from tests.conftest import MakeGateway, WriteConfig
from tests.identity import bearer, identity_config, login, make_user

Client = TestClient[web.Request, web.Application]
MakeServer = Callable[..., Awaitable[TestServer]]


# --- the balancer on its own ----------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def upstream_config(*weights: int, **fields: Any) -> UpstreamConfig:
    targets = tuple(
        UpstreamTarget(
            url=f"http://t{i}:80", scheme="http", host=f"t{i}", port=80, base_path="", weight=w
        )
        for i, w in enumerate(weights)
    )
    return UpstreamConfig(name="up", targets=targets, **fields)


def picks(balancer: Balancer, count: int) -> list[int]:
    out = []
    for _ in range(count):
        attempt = balancer.pick()
        assert attempt is not None
        balancer.answered(attempt, 200)
        balancer.finish(attempt)
        out.append(attempt.target.index)
    return out


def test_smooth_weighted_round_robin_is_exact_and_spread() -> None:
    balancer = Balancer(upstream_config(1, 3))
    assert picks(balancer, 8) == [1, 0, 1, 1, 1, 0, 1, 1]
    counts = collections.Counter(picks(Balancer(upstream_config(5, 1, 2)), 800))
    assert counts == {0: 500, 1: 100, 2: 200}


def test_least_outstanding_picks_the_idlest_and_breaks_ties_by_weight() -> None:
    balancer = Balancer(upstream_config(1, 1, 1, balance="least_outstanding"))
    slow = balancer.pick()
    assert slow is not None
    # while one is in flight, the other two share the traffic
    assert set(picks(balancer, 6)) == {0, 1, 2} - {slow.target.index}
    balancer.finish(slow)
    weighted = Balancer(upstream_config(1, 3, balance="least_outstanding"))
    assert collections.Counter(picks(weighted, 400)) == {0: 100, 1: 300}


def failing(balancer: Balancer, target: TargetState, times: int) -> None:
    for _ in range(times):
        attempt = balancer.pick()
        assert attempt is not None
        assert attempt.target is target
        balancer.failed(attempt, "connect failed: Connection refused")
        balancer.finish(attempt)


def test_ejection_backs_off_doubling_with_one_half_open_probe() -> None:
    clock = FakeClock()
    passive = PassiveConfig(failures=2, backoff=10.0, max_backoff=30.0)
    balancer = Balancer(upstream_config(1, 1, passive=passive), clock=clock)
    bad, good = balancer.targets
    # only `bad` is eligible besides `good`: excluding good makes every pick land on bad
    first = balancer.pick(exclude=[good])
    assert first is not None
    assert not balancer.failed(first, "HTTP 502")
    balancer.finish(first)
    second = balancer.pick(exclude=[good])
    assert second is not None
    assert balancer.failed(second, "HTTP 502")  # the second failure in a row ejects
    balancer.finish(second)
    assert bad.state(clock.now) == "ejected"
    assert bad.ejected_until == clock.now + 10
    assert balancer.pick(exclude=[good]) is None
    assert balancer.retry_after() == 10
    assert picks(balancer, 3) == [1, 1, 1]

    clock.now += 10
    assert bad.state(clock.now) == "half_open"
    probe = balancer.pick()
    assert probe is not None
    assert probe.probe
    assert probe.target is bad
    assert picks(balancer, 2) == [1, 1]  # one probe at a time
    balancer.failed(probe, "connect failed: Connection refused")
    balancer.finish(probe)
    assert bad.ejected_until == clock.now + 20  # doubled

    clock.now += 20
    probe = balancer.pick()
    assert probe is not None
    assert probe.probe
    balancer.failed(probe, "HTTP 503")
    balancer.finish(probe)
    assert bad.ejected_until == clock.now + 30  # doubled, capped at max_backoff

    clock.now += 30
    probe = balancer.pick()
    assert probe is not None
    assert probe.probe
    balancer.answered(probe, 200)
    balancer.finish(probe)
    assert bad.state(clock.now) == "healthy"
    assert bad.ejections == 0
    assert bad.failures == 0
    assert sorted(picks(balancer, 4)) == [0, 0, 1, 1]


def test_a_probe_cut_short_lets_the_next_one_through() -> None:
    clock = FakeClock()
    balancer = Balancer(
        upstream_config(1, 1, passive=PassiveConfig(failures=1, backoff=1.0)), clock=clock
    )
    bad, _good = balancer.targets
    failing(balancer, bad, 1)
    clock.now += 1
    probe = balancer.pick()
    assert probe is not None
    assert probe.probe
    balancer.finish(probe)  # the client went away: no verdict
    again = balancer.pick()
    assert again is not None
    assert again.probe
    assert again.target is bad


def test_a_lone_target_is_never_ejected() -> None:
    balancer = Balancer(upstream_config(1, passive=PassiveConfig(failures=1)))
    (only,) = balancer.targets
    failing(balancer, only, 5)
    assert only.state(0.0) == "healthy"
    assert only.failures == 5
    assert only.last_error == "connect failed: Connection refused"


def test_health_check_thresholds() -> None:
    check = HealthCheckConfig(interval=7.0, healthy=2, unhealthy=3)
    balancer = Balancer(upstream_config(1, 1, health_check=check))
    target = balancer.targets[0]
    assert not balancer.checked(target, False, "HTTP 503")
    assert not balancer.checked(target, True, "HTTP 200")  # the streak starts over
    assert not balancer.checked(target, False, "HTTP 503")
    assert not balancer.checked(target, False, "timeout")
    assert balancer.checked(target, False, "HTTP 503")
    assert target.state(0.0) == "unhealthy"
    assert picks(balancer, 3) == [1, 1, 1]
    assert not balancer.checked(target, True, "HTTP 200")
    assert balancer.checked(target, True, "HTTP 204")
    assert target.state(0.0) == "healthy"

    for t in balancer.targets:
        for _ in range(3):
            balancer.checked(t, False, "timeout")
    assert balancer.pick() is None
    assert balancer.retry_after() == 7  # no back-off to wait for: one check interval


def test_retry_budget_ratio_with_a_floor_per_second() -> None:
    clock = FakeClock()
    budget = RetryBudget(RetryBudgetConfig(ratio=0.2, min_per_second=2), clock)
    for _ in range(10):
        budget.request()
    spent = 0
    while budget.allows():
        budget.spend()
        spent += 1
    assert spent == 2  # the floor; 20% of 10 is 2 as well
    clock.now += 1
    for _ in range(90):
        budget.request()
    while budget.allows():
        budget.spend()
        spent += 1
    assert spent == 20  # 20% of the 100 requests of the window
    clock.now += 1
    assert budget.allows()  # a new second: the floor again
    clock.now += RetryBudget.WINDOW
    budget.spend()
    budget.spend()
    assert not budget.allows()  # no requests in the window: the floor only


# --- configuration ----------------------------------------------------------------


def test_targets_with_weights_and_the_upstream_keys(write_config: WriteConfig) -> None:
    from gateway.config import load_config

    config = load_config(
        write_config(
            """\
            upstreams:
              up:
                targets: [http://a:1, {url: "http://b:2/base", weight: 3}]
                balance: least_outstanding
                health_check: {path: /ping, interval: 1s, timeout: 500ms, healthy: 1}
                passive: {failures: 2, backoff: 1s, max_backoff: 1m}
                retries: 1
                retry_budget: 50%
              other:
                targets: [http://c:3]
                retry_budget: {ratio: 0.1, min_per_second: 0}
            """
        )
    )
    up = config.upstreams["up"]
    assert [(t.url, t.weight, t.base_path) for t in up.targets] == [
        ("http://a:1", 1, ""),
        ("http://b:2/base", 3, "/base"),
    ]
    assert up.balance == "least_outstanding"
    assert up.health_check == HealthCheckConfig(path="/ping", interval=1.0, timeout=0.5, healthy=1)
    assert up.passive == PassiveConfig(failures=2, backoff=1.0, max_backoff=60.0)
    assert up.retries == 1
    assert up.retry_budget == RetryBudgetConfig(ratio=0.5)
    other = config.upstreams["other"]
    assert other.balance == "round_robin"
    assert other.health_check is None
    assert other.passive == PassiveConfig()
    assert other.retries == 2
    assert other.retry_budget == RetryBudgetConfig(ratio=0.1, min_per_second=0)


def test_bad_upstream_keys_name_file_line_and_key(write_config: WriteConfig) -> None:
    from gateway.config import load_config
    from gateway.config.yamlsource import ConfigError

    path = write_config(
        """\
        upstreams:
          up:
            targets:
              - http://a:1
              - {url: http://b:2, weight: 0}
              - {weight: 2}
              - http://a:1
            balance: random
            health_check: {path: health, interval: 0s, hops: 1}
            passive: {failures: 0, backoff: 1m, max_backoff: 10s}
            retries: 11
            retry_budget: 120%
          other:
            targets: [{url: http://c:3, weight: 1001}]
            retry_budget: lots
        """
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [(p.line, p.message) for p in info.value.problems] == [
        (5, "upstreams.up.targets[1].weight: must be at least 1"),
        (6, "upstreams.up.targets[2]: needs a url"),
        (8, "upstreams.up.balance: must be one of round_robin, least_outstanding, not 'random'"),
        (9, "upstreams.up.health_check.path: must start with /, got 'health'"),
        (9, "upstreams.up.health_check.interval: must be longer than zero"),
        (
            9,
            "upstreams.up.health_check.hops: unknown key "
            "(known keys: path, interval, timeout, healthy, unhealthy)",
        ),
        (10, "upstreams.up.passive.failures: must be at least 1"),
        (
            10,
            "upstreams.up.passive.max_backoff: 10s is shorter than "
            "upstreams.up.passive.backoff (1m)",
        ),
        (11, "upstreams.up.retries: must be at most 10"),
        (12, "upstreams.up.retry_budget: must be between 0% and 100%"),
        (14, "upstreams.other.targets[0].weight: must be at most 1000"),
        (
            15,
            "upstreams.other.retry_budget: expected a percentage like 20% (or a fraction like 0.2)",
        ),
    ]


def test_a_target_listed_twice_is_an_error(write_config: WriteConfig) -> None:
    from gateway.config import load_config
    from gateway.config.yamlsource import ConfigError

    path = write_config("upstreams:\n  up:\n    targets: [http://a:1, {url: http://a:1}]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:3: upstreams.up.targets[1]: 'http://a:1' is listed twice"


# --- through the gateway, against real upstream servers --------------------------------


def target_app(name: str, state: dict[str, Any]) -> web.Application:
    """An upstream that says who it is, can hold a request open, and has a /health."""
    state.setdefault("served", 0)
    state.setdefault("health", 200)

    async def who(request: web.Request) -> web.Response:
        await request.read()
        state["served"] += 1
        return web.json_response({"name": name})

    async def hold(request: web.Request) -> web.Response:
        state["holding"].set()
        await state["release"].wait()
        return web.json_response({"name": name})

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=state["health"])

    app = web.Application()
    app.router.add_route("*", "/who", who)
    app.router.add_get("/hold", hold)
    app.router.add_get("/health", health)
    return app


def gateway_config(targets: str, extra: str = "") -> str:
    lines = [
        "upstreams:",
        "  svc:",
        f"    targets: {targets}",
        *(f"    {line}" for line in extra.splitlines() if line.strip()),
        "routes:",
        "  - {path: /svc/**, upstream: svc, strip_prefix: /svc, auth: none}",
    ]
    return "\n".join(lines) + "\n"


def local(port: int | None) -> str:
    return f"http://127.0.0.1:{port}"


def balancer_of(client: Client, name: str = "svc") -> Balancer:
    return client.app[HOLDER].current.pools[name].balancer


async def eventually(condition: Callable[[], bool], what: str, tries: int = 1000) -> None:
    """Poll `condition` (bounded: `tries` rounds of 10 ms), failing with `what`."""
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def names(client: Client, count: int, path: str = "/svc/who") -> collections.Counter[str]:
    served: collections.Counter[str] = collections.Counter()
    for _ in range(count):
        resp = await client.get(path)
        assert resp.status == 200, await resp.text()
        served[(await resp.json())["name"]] += 1
    return served


@pytest.fixture
async def server(aiohttp_server: MakeServer) -> MakeServer:
    return aiohttp_server


async def test_weights_split_traffic_exactly(gateway: MakeGateway, server: MakeServer) -> None:
    a, b = await server(target_app("a", {})), await server(target_app("b", {}))
    client = await gateway(
        gateway_config(f'[{local(a.port)}, {{url: "{local(b.port)}", weight: 3}}]')
    )

    async def batch() -> list[str]:
        responses = await asyncio.gather(*(client.get("/svc/who") for _ in range(20)))
        return [(await r.json())["name"] for r in responses]

    served: collections.Counter[str] = collections.Counter()
    for _ in range(20):
        served.update(await batch())
    assert served == {"a": 100, "b": 300}  # smooth WRR is deterministic: exact, not ±10%


async def test_least_outstanding_avoids_the_target_with_a_slow_request(
    gateway: MakeGateway, server: MakeServer
) -> None:
    release = asyncio.Event()
    states = {n: {"holding": asyncio.Event(), "release": release} for n in ("a", "b")}
    a = await server(target_app("a", states["a"]))
    b = await server(target_app("b", states["b"]))
    client = await gateway(
        gateway_config(f"[{local(a.port)}, {local(b.port)}]", "balance: least_outstanding")
    )
    slow = asyncio.ensure_future(client.get("/svc/hold"))
    await eventually(lambda: any(s["holding"].is_set() for s in states.values()), "a held request")
    busy = "a" if states["a"]["holding"].is_set() else "b"
    idle = "b" if busy == "a" else "a"
    assert await names(client, 10) == {idle: 10}
    release.set()
    assert (await (await slow).json())["name"] == busy
    assert await names(client, 10) == {"a": 5, "b": 5}  # both idle again: round-robin


async def test_a_target_killed_under_load_fails_no_idempotent_request(
    gateway: MakeGateway, server: MakeServer
) -> None:
    a_state: dict[str, Any] = {}
    b_state: dict[str, Any] = {}
    a = await server(target_app("a", a_state))
    b = await server(target_app("b", b_state))
    b_port = b.port
    client = await gateway(
        gateway_config(
            f"[{local(a.port)}, {local(b_port)}]",
            "passive: {failures: 3, backoff: 50ms, max_backoff: 200ms}",
        )
    )
    balancer = balancer_of(client)
    target_b = balancer.targets[1]
    statuses: collections.Counter[int] = collections.Counter()
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            resp = await client.get("/svc/who")
            statuses[resp.status] += 1
            await resp.read()

    workers = [asyncio.ensure_future(load()) for _ in range(8)]
    try:
        await eventually(lambda: a_state["served"] > 100 and b_state["served"] > 100, "warm-up")
        await b.close()  # b dies under load
        await eventually(lambda: target_b.ejected_until is not None, "b ejected")
        before, total = target_b.attempts, statuses.total()
        await eventually(lambda: statuses.total() > total + 300, "300 more requests")
        # Ejected, b only gets the odd half-open probe (each one retried on a).
        assert target_b.attempts - before < 30

        revived: dict[str, Any] = {}
        await server(target_app("b", revived), port=b_port)  # back on the same port
        await eventually(lambda: revived["served"] > 20, "traffic back on b")
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert set(statuses) == {200}, statuses  # not a single failed GET
    assert target_b.ejected_until is None
    assert target_b.ejections == 0


async def test_requests_with_a_body_or_not_idempotent_are_not_retried(
    gateway: MakeGateway, server: MakeServer, unused_tcp_port: int
) -> None:
    a = await server(target_app("a", {}))
    client = await gateway(
        gateway_config(
            f"[{local(unused_tcp_port)}, {local(a.port)}]",
            # stays in rotation, so every other first attempt fails; every retry allowed
            "passive: {failures: 100}\nretry_budget: 100%",
        )
    )
    for method in ("POST", "PATCH", "PUT"):
        statuses = []
        for _ in range(2):
            resp = await client.request(method, "/svc/who", data=b"payload")
            statuses.append(resp.status)
            if resp.status == 502:
                body = await resp.json()
                assert body["code"] == "upstream_unreachable"
                assert resp.content_type == "application/problem+json"
        assert sorted(statuses) == [200, 502], method
    for method in ("GET", "HEAD", "OPTIONS", "DELETE", "PUT"):
        for _ in range(2):
            resp = await client.request(method, "/svc/who")  # no body: replayable
            assert resp.status == 200, method
    assert balancer_of(client).targets[0].failures >= 8


async def test_retries_stop_at_the_configured_count(
    gateway: MakeGateway, unused_tcp_port_factory: Callable[[], int]
) -> None:
    dead = [local(unused_tcp_port_factory()) for _ in range(4)]
    client = await gateway(
        gateway_config(f"[{', '.join(dead)}]", "retries: 2\npassive: {failures: 100}")
    )
    resp = await client.get("/svc/who")
    assert resp.status == 502
    assert sorted(t.attempts for t in balancer_of(client).targets) == [0, 1, 1, 1]


async def test_active_health_check_takes_a_target_out_and_back(
    gateway: MakeGateway, server: MakeServer
) -> None:
    b_state: dict[str, Any] = {}
    a = await server(target_app("a", {}))
    b = await server(target_app("b", b_state))
    client = await gateway(
        gateway_config(
            f"[{local(a.port)}, {local(b.port)}]",
            "health_check: {path: /health, interval: 20ms, timeout: 1s, healthy: 2, unhealthy: 2}",
        )
    )
    target_b = balancer_of(client).targets[1]
    await eventually(lambda: target_b.last_check is not None, "a first check")
    assert await names(client, 4) == {"a": 2, "b": 2}

    b_state["health"] = 503
    await eventually(lambda: not target_b.healthy, "b unhealthy")
    assert await names(client, 20) == {"a": 20}
    assert target_b.last_check is not None
    assert target_b.last_check.detail == "HTTP 503"

    b_state["health"] = 302  # a redirect counts as healthy
    await eventually(lambda: target_b.healthy, "b healthy again")
    assert (await names(client, 20))["b"] >= 9


async def test_no_healthy_target_is_503_with_retry_after(
    gateway: MakeGateway, unused_tcp_port_factory: Callable[[], int]
) -> None:
    dead = [local(unused_tcp_port_factory()) for _ in range(2)]
    client = await gateway(
        gateway_config(f"[{', '.join(dead)}]", "passive: {failures: 1, backoff: 1m}")
    )
    resp = await client.get("/svc/who")
    assert resp.status == 502  # both tried, both refused; now both are ejected
    for method in ("GET", "POST"):
        resp = await client.request(method, "/svc/who")
        assert resp.status == 503
        assert resp.content_type == "application/problem+json"
        body = await resp.json()
        assert body["code"] == "no_healthy_upstream"
        assert body["detail"] == "upstream svc has no healthy target"
        assert 1 <= int(resp.headers["Retry-After"]) <= 60


async def test_admin_upstreams_shows_states_in_flight_and_errors(
    gateway: MakeGateway, server: MakeServer, unused_tcp_port: int, policies: Path
) -> None:
    release = asyncio.Event()
    a_state: dict[str, Any] = {"holding": asyncio.Event(), "release": release}
    checked_state: dict[str, Any] = {"health": 503}
    a = await server(target_app("a", a_state))
    checked = await server(target_app("c", checked_state))
    text = (
        identity_config()
        + "  - {path: /svc/**, upstream: svc, strip_prefix: /svc, auth: none}\n"
        + "  - {path: /checked/**, upstream: checked, auth: none}\n"
        + "upstreams:\n"
        + f"  svc:\n    targets: [{local(a.port)}, {{url: {local(unused_tcp_port)}, weight: 2}}]\n"
        + "    passive: {failures: 1, backoff: 1m}\n"
        + f"  checked:\n    targets: [{local(checked.port)}]\n"
        + "    balance: least_outstanding\n"
        + "    health_check: {path: /health, interval: 1h, unhealthy: 1}\n"
    )
    client = await gateway(text)
    await make_user(client, "root", role="admin")
    await make_user(client, "joe", role="user")
    root = bearer(await login(client, "root"))

    resp = await client.get("/svc/who")  # the dead target first (weight 2), then a
    assert resp.status == 200
    held = asyncio.ensure_future(client.get("/svc/hold"))
    await a_state["holding"].wait()
    await eventually(lambda: not balancer_of(client, "checked").targets[0].healthy, "check")

    resp = await client.get("/admin/upstreams", headers=root)
    assert resp.status == 200
    body = await resp.json()
    assert body["next_cursor"] is None
    checked_item, svc = body["items"]
    assert svc["name"] == "svc"
    assert svc["balance"] == "round_robin"
    assert svc["health_check"] is None
    live, dead = svc["targets"]
    assert live["url"] == local(a.port)
    assert live["weight"] == 1
    assert live["state"] == "healthy"
    assert live["in_flight"] == 1  # the held request
    assert live["consecutive_failures"] == 0
    assert live["last_error"] is None
    assert dead["weight"] == 2
    assert dead["state"] == "ejected"
    assert dead["ejected_until"] > dead["last_error"]["at"]
    assert dead["in_flight"] == 0
    assert dead["consecutive_failures"] == 1
    assert dead["last_error"]["error"] == "connect failed: Connection refused"
    assert dead["last_health_check"] is None

    assert checked_item["name"] == "checked"
    assert checked_item["balance"] == "least_outstanding"
    assert checked_item["health_check"] == {"path": "/health", "interval": 3600.0, "timeout": 2.0}
    (target,) = checked_item["targets"]
    assert target["state"] == "unhealthy"
    assert target["last_health_check"]["ok"] is False
    assert target["last_health_check"]["result"] == "HTTP 503"
    resp = await client.get("/checked/who")
    assert resp.status == 503
    assert (await resp.json())["code"] == "no_healthy_upstream"
    assert resp.headers["Retry-After"] == "3600"  # nothing ejected: one check interval

    release.set()
    assert (await held).status == 200
    resp = await client.get("/admin/upstreams", headers=root)
    assert (await resp.json())["items"][1]["targets"][0]["in_flight"] == 0

    joe = bearer(await login(client, "joe"))
    assert (await client.get("/admin/upstreams", headers=joe)).status == 403
